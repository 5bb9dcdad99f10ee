//! The rectified-flow path: plain math, like the DDPM schedule.
//!
//! **Time convention (the only place it is written down):** t runs over [0, 1] with **t = 0 the data and t = 1 the
//! noise**: x_t = (1 - t) x0 + t eps. Along this straight line the velocity is dx_t/dt = eps - x0, which the network
//! learns to predict from (x_t, t). Sampling integrates from t = 1 (pure noise) down to t = 0.

use tch::Tensor;

/// x_t = (1 - t) x0 + t eps, per sample. x0, eps: [N, 1, H, W]; t: [N] in [0, 1].
pub fn interpolate(x0: &Tensor, eps: &Tensor, t: &Tensor) -> Tensor {
    let t = t.view([-1, 1, 1, 1]);
    x0 * (1.0 - &t) + eps * &t
}

/// The velocity target eps - x0 (the time derivative of [`interpolate`]).
pub fn velocity(x0: &Tensor, eps: &Tensor) -> Tensor {
    eps - x0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn ends_are_data_and_noise_and_velocity_is_the_derivative() {
        let x0 = Tensor::rand([2, 1, 4, 4], (Kind::Float, Device::Cpu));
        let eps = Tensor::randn([2, 1, 4, 4], (Kind::Float, Device::Cpu));
        let t = |v: f32| Tensor::from_slice(&[v, v]);
        assert!(interpolate(&x0, &eps, &t(0.0)).allclose(&x0, 1e-6, 1e-6, false));
        assert!(interpolate(&x0, &eps, &t(1.0)).allclose(&eps, 1e-6, 1e-6, false));
        let h = 1e-2;
        let slope = (interpolate(&x0, &eps, &t(0.5 + h)) - interpolate(&x0, &eps, &t(0.5))) / h as f64;
        assert!(slope.allclose(&velocity(&x0, &eps), 1e-3, 1e-3, false));
    }
}
