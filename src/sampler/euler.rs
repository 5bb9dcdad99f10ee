//! Euler integration of a learned velocity field (rectified flow), from t = 1 (noise) to t = 0 (data), in the
//! convention of [`crate::flow_path`]: x_{t - dt} = x_t - dt v(x_t, t).

use tch::Tensor;

use super::{time_vector, Denoiser, FrameEvery, FrameRecorder, NoiseSource, SampleOutput};

/// Draws `n` samples in `steps` uniform Euler steps. Only x_1 is random.
pub fn sample(
    velocity: &dyn Denoiser,
    steps: usize,
    n: i64,
    class: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    frames: FrameEvery,
) -> SampleOutput {
    let device = velocity.device();
    let steps = steps.max(1);
    let dt = 1.0 / steps as f64;
    let mut recorder = FrameRecorder::new(frames);
    tch::no_grad(|| {
        let mut x = noise.images(n, device); // x_1 ~ N(0, I), [n, 1, 28, 28]
        for i in 0..steps {
            let t = 1.0 - i as f64 * dt;
            // x_{t - dt} = x_t - dt v(x_t, t)
            let v = velocity.predict(&x, &time_vector(n, t, device), class);
            x -= v * dt;
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
    use tch::{Device, Kind};

    /// On the straight path the true velocity at (x_t, t) is (x_t - x0) / t, so Euler lands on x0 exactly for any
    /// step count.
    #[test]
    fn oracle_velocity_lands_on_x0() {
        struct Oracle(Tensor);
        impl Denoiser for Oracle {
            fn predict(&self, x: &Tensor, t: &Tensor, _c: Option<&Tensor>) -> Tensor {
                (x - &self.0) / t.view([-1, 1, 1, 1])
            }
        }
        let x0 = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        for steps in [1, 5, 50] {
            let out = sample(
                &Oracle(x0.shallow_clone()),
                steps,
                2,
                None,
                &mut RunRng::new(2),
                FrameEvery(None),
            );
            let err = f64::try_from((&out.images - &x0).abs().max()).expect("max");
            assert!(err < 1e-5, "{steps} steps: {err}");
        }
    }

    #[test]
    fn zero_velocity_keeps_the_starting_noise() {
        let out = sample(&Zero, 10, 1, None, &mut RunRng::new(8), FrameEvery(Some(5)));
        let start = RunRng::new(8)
            .normal_tensor(&[1, 1, 28, 28], Device::Cpu)
            .clamp(0.0, 1.0);
        assert!(out.images.equal(&start));
        assert_eq!(out.frames.len(), 4); // after steps 1, 5, 10, and the final images
    }
}
