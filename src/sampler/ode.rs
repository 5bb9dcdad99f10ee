//! Fixed-step ODE solvers for a learned velocity field (rectified flow): Euler (first order, one evaluation per
//! step), Heun and explicit midpoint (second order, two evaluations per step).
//!
//! In the convention of [`crate::diffusion::flow_path`], x_t = (1 - t) x0 + t eps and v = dx_t/dt = eps - x0; sampling
//! integrates dx/dt = v(x, t) from t = 1 (noise) down to t = 0 (data) over uniform steps. Heun's last step, the one
//! that reaches t = 0, is a plain Euler step, as in EDM (Karras et al. 2022): correcting it would evaluate the
//! network at t = 0, where it has nothing left to predict. So S Heun steps cost 2S - 1 evaluations, S midpoint steps
//! 2S, and S Euler steps S.

use tch::Tensor;

use super::{Denoiser, FrameEvery, FrameRecorder, NoiseSource, SampleOutput};

/// Which ODE solver integrates the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowSolver {
    Euler,
    Heun,
    Midpoint,
}

impl FlowSolver {
    /// Network evaluations for `steps` steps from t = 1 to t = 0.
    pub fn evaluations(self, steps: usize) -> usize {
        let steps = steps.max(1);
        match self {
            FlowSolver::Euler => steps,
            FlowSolver::Heun => 2 * steps - 1,
            FlowSolver::Midpoint => 2 * steps,
        }
    }

    /// One step of x from time t to t_next (h = t_next - t < 0). Returns the new x and the evaluations it took.
    pub fn step(
        self,
        x: &Tensor,
        t: f64,
        t_next: f64,
        velocity: &mut impl FnMut(&Tensor, f64) -> Tensor,
    ) -> (Tensor, usize) {
        let h = t_next - t;
        match self {
            FlowSolver::Euler => (euler(x, t, h, velocity), 1),
            // No correction at t' = 0 (see the module comment).
            FlowSolver::Heun if t_next == 0.0 => (euler(x, t, h, velocity), 1),
            FlowSolver::Heun => {
                // 1. d = v(x, t); predictor x_e = x + h d
                let d = velocity(x, t);
                let x_euler = x + &d * h;
                // 2. d' = v(x_e, t'); x' = x + h (d + d') / 2
                let d_next = velocity(&x_euler, t_next);
                (x + (d + d_next) * (0.5 * h), 2)
            }
            FlowSolver::Midpoint => {
                // 1. x_mid = x + (h/2) v(x, t)
                let x_mid = x + velocity(x, t) * (0.5 * h);
                // 2. x' = x + h v(x_mid, t + h/2)
                (x + velocity(&x_mid, t + 0.5 * h) * h, 2)
            }
        }
    }
}

/// x' = x + h v(x, t)
fn euler(x: &Tensor, t: f64, h: f64, velocity: &mut impl FnMut(&Tensor, f64) -> Tensor) -> Tensor {
    x + velocity(x, t) * h
}

/// Integrates x from `times[0]` through every time to the last. `on_step(x, k)` sees x after k evaluations in all.
pub fn integrate(
    solver: FlowSolver,
    mut x: Tensor,
    times: &[f64],
    mut velocity: impl FnMut(&Tensor, f64) -> Tensor,
    mut on_step: impl FnMut(&Tensor, usize),
) -> Tensor {
    let mut evaluations = 0;
    for pair in times.windows(2) {
        let (next, used) = solver.step(&x, pair[0], pair[1], &mut velocity);
        x = next;
        evaluations += used;
        on_step(&x, evaluations);
    }
    x
}

/// Uniform times 1, 1 - 1/S, ..., 0 for S steps.
pub fn uniform_times(steps: usize) -> Vec<f64> {
    let steps = steps.max(1);
    (0..=steps).map(|i| 1.0 - i as f64 / steps as f64).collect()
}

/// Draws `n` samples in `steps` uniform steps of `solver`. Only x_1 is random.
pub fn sample(
    solver: FlowSolver,
    velocity: &dyn Denoiser,
    steps: usize,
    n: i64,
    class: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    frames: FrameEvery,
) -> SampleOutput {
    let device = velocity.device();
    let mut recorder = FrameRecorder::new(frames);
    tch::no_grad(|| {
        let x = noise.images(n, device); // x_1 ~ N(0, I), [n, 1, 28, 28]
        let x = integrate(
            solver,
            x,
            &uniform_times(steps),
            |x, t| velocity.predict(x, t, class),
            |x, done| recorder.offer(x, done),
        );
        recorder.finish(&x)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::rng::RunRng;
    use crate::sampler::dummies::{Oracle, Zero};
    use crate::sampler::toy;
    use tch::{Device, Kind};

    const SOLVERS: [FlowSolver; 3] = [FlowSolver::Euler, FlowSolver::Heun, FlowSolver::Midpoint];

    /// Max error after integrating the Gaussian toy's exact velocity from t = 0.9 to t = 0.1 in `steps` steps.
    fn toy_error(solver: FlowSolver, steps: usize) -> f64 {
        let z = toy::z();
        let times: Vec<f64> = (0..=steps).map(|i| 0.9 - 0.8 * i as f64 / steps as f64).collect();
        let x = integrate(solver, toy::flow_state(&z, 0.9), &times, toy::flow_velocity, |_, _| {});
        toy::max_error(&x, &toy::flow_state(&z, 0.1))
    }

    /// Max error on dx/dt = a(t) x with a(t) = cos 3t + 1/2 from t = 0.9 to 0.1, whose solution is
    /// x(t) = x(0.9) exp(A(t) - A(0.9)) with A(t) = sin(3t)/3 + t/2: a field with no special structure.
    fn generic_error(solver: FlowSolver, steps: usize) -> f64 {
        let big_a = |t: f64| (3.0 * t).sin() / 3.0 + 0.5 * t;
        let x1 = toy::z();
        let times: Vec<f64> = (0..=steps).map(|i| 0.9 - 0.8 * i as f64 / steps as f64).collect();
        let x = integrate(
            solver,
            x1.shallow_clone(),
            &times,
            |x, t| x * ((3.0 * t).cos() + 0.5),
            |_, _| {},
        );
        toy::max_error(&x, &(x1 * (big_a(0.1) - big_a(0.9)).exp()))
    }

    fn errors(f: impl Fn(FlowSolver, usize) -> f64, solver: FlowSolver, counts: &[usize]) -> Vec<f64> {
        counts.iter().map(|&s| f(solver, s)).collect()
    }

    /// Orders of convergence on the Gaussian toy (exact velocity, exact solution in closed form) between t = 0.9 and
    /// t = 0.1: doubling the steps halves Euler's error and quarters Heun's.
    ///
    /// Midpoint does better than its order here, about 8x: on this path the toy's solution is
    /// (1 - t) M + z sqrt(q(t)) with q quadratic, and for y' = (q'/2q) y the midpoint step reproduces the Taylor
    /// series of y(t + h) = y(t) sqrt(1 + (q'/q) h + (q''/2q) h^2) through h^3 (expand both), so its local error is
    /// O(h^4). The generic field below shows its second order.
    #[test]
    fn orders_on_the_gaussian_toy() {
        let counts = [10, 20, 40];
        let euler = errors(toy_error, FlowSolver::Euler, &counts);
        toy::assert_ratios("Euler (toy)", &counts, &euler, 1.6..=2.6);
        let heun = errors(toy_error, FlowSolver::Heun, &counts);
        toy::assert_ratios("Heun (toy)", &counts, &heun, 3.0..=5.5);
        let midpoint = errors(toy_error, FlowSolver::Midpoint, &counts);
        toy::assert_ratios("midpoint (toy)", &counts, &midpoint, 6.5..=9.5);
        assert!(euler[2] < 2e-2 && heun[2] < 5e-3 && midpoint[2] < 1e-3);
    }

    #[test]
    fn orders_on_a_generic_linear_field() {
        let counts = [20, 40, 80];
        toy::assert_ratios(
            "Euler (generic)",
            &counts,
            &errors(generic_error, FlowSolver::Euler, &counts),
            1.6..=2.6,
        );
        toy::assert_ratios(
            "Heun (generic)",
            &counts,
            &errors(generic_error, FlowSolver::Heun, &counts),
            3.0..=5.5,
        );
        toy::assert_ratios(
            "midpoint (generic)",
            &counts,
            &errors(generic_error, FlowSolver::Midpoint, &counts),
            3.0..=5.5,
        );
    }

    /// On the straight path the true velocity at (x_t, t) is (x_t - x0) / t, so every solver lands on x0 exactly for
    /// any step count. Heun must not evaluate at t = 0 (the oracle would divide by zero there).
    #[test]
    fn oracle_velocity_lands_on_x0() {
        let x0 = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        let oracle = Oracle::velocity(&x0);
        for solver in SOLVERS {
            for steps in [1, 5, 50] {
                let out = sample(solver, &oracle, steps, 2, None, &mut RunRng::new(2), FrameEvery(None));
                let err = f64::try_from((&out.images - &x0).abs().max()).expect("max");
                assert!(err < 1e-5, "{solver:?} {steps} steps: {err}");
            }
        }
    }

    /// The evaluations a sampler makes are the ones [`FlowSolver::evaluations`] announces, at the times each
    /// method's formula names.
    #[test]
    fn evaluation_counts_and_times() {
        struct Times(std::cell::RefCell<Vec<f64>>);
        impl Denoiser for Times {
            fn predict(&self, x: &Tensor, t: f64, _c: Option<&Tensor>) -> Tensor {
                self.0.borrow_mut().push(t);
                x.zeros_like()
            }
        }
        let expected: [(FlowSolver, Vec<f64>); 3] = [
            (FlowSolver::Euler, vec![1.0, 0.5]),
            (FlowSolver::Heun, vec![1.0, 0.5, 0.5]),
            (FlowSolver::Midpoint, vec![1.0, 0.75, 0.5, 0.25]),
        ];
        for (solver, times) in expected {
            let probe = Times(Default::default());
            sample(solver, &probe, 2, 1, None, &mut RunRng::new(0), FrameEvery(None));
            assert_eq!(*probe.0.borrow(), times, "{solver:?}");
            assert_eq!(solver.evaluations(2), times.len());
        }
        assert_eq!(FlowSolver::Heun.evaluations(10), 19);
        assert_eq!(FlowSolver::Midpoint.evaluations(10), 20);
    }

    /// Zero velocity leaves x_1 as it is; frames are kept each time the evaluation count passes a multiple of k.
    #[test]
    fn zero_velocity_keeps_the_starting_noise() {
        let start = RunRng::new(8)
            .normal_tensor(&[1, 1, 28, 28], Device::Cpu)
            .clamp(0.0, 1.0);
        for (solver, frames) in [
            (FlowSolver::Euler, 4),    // counts 1, 2, ..., 10: kept after 1, 5, 10, then the final images
            (FlowSolver::Heun, 5),     // counts 2, 4, ..., 18, 19: kept after 2, 6, 10, 16, then the final images
            (FlowSolver::Midpoint, 6), // counts 2, 4, ..., 20: kept after 2, 6, 10, 16, 20, then the final images
        ] {
            let out = sample(solver, &Zero, 10, 1, None, &mut RunRng::new(8), FrameEvery(Some(5)));
            assert!(out.images.equal(&start), "{solver:?}");
            assert_eq!(out.frames.len(), frames, "{solver:?}");
        }
    }
}
