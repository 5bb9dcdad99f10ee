//! A per-pixel Gaussian toy whose ODE solutions are known in closed form, for solver tests.
//!
//! Data x0 ~ N(M, S^2) in every pixel. Under VP diffusion x = alpha x0 + sigma eps the marginal is
//! N(alpha M, alpha^2 S^2 + sigma^2); under the flow path x_t = (1 - t) x0 + t eps it is N((1 - t) M, D(t)^2) with
//! D(t)^2 = (1 - t)^2 S^2 + t^2. Both probability-flow ODEs keep the standardized value z constant, so the exact
//! solution at any level is mean + std * z, and the exact predictions follow from it:
//! - noise: E[eps | x] = sigma (x - alpha M) / (alpha^2 S^2 + sigma^2);
//! - velocity: d/dt ((1 - t) M + D(t) z) = -M + z D'(t), with D'(t) = (t - (1 - t) S^2) / D(t).
//!
//! Everything is written here in f64, independently of the solvers; the tensors are f64 so that round-off stays far
//! below the discretization errors being measured.

use tch::{Device, Kind, Tensor};

use super::levels::Level;

pub const M: f64 = 0.3;
pub const S: f64 = 0.2;

/// Standardized values z, one per "pixel": 13 points from -3 to 3.
pub fn z() -> Tensor {
    Tensor::linspace(-3.0, 3.0, 13, (Kind::Double, Device::Cpu))
}

/// The exact VP state at `level` for standardized values `z`: alpha M + sqrt(alpha^2 S^2 + sigma^2) z.
pub fn vp_state(z: &Tensor, level: Level) -> Tensor {
    z * (level.alpha.powi(2) * S * S + level.sigma.powi(2)).sqrt() + level.alpha * M
}

/// The exact noise prediction at `level`: sigma (x - alpha M) / (alpha^2 S^2 + sigma^2).
pub fn vp_eps(x: &Tensor, level: Level) -> Tensor {
    (x - level.alpha * M) * (level.sigma / (level.alpha.powi(2) * S * S + level.sigma.powi(2)))
}

/// A continuous VP schedule: alpha^2 = exp(-(b0 u + (b1 - b0) u^2 / 2)) with b0 = 0.1, b1 = 20 (the continuous
/// linear-beta schedule of Song et al. 2021), at u in [0, 1].
pub fn vp_level(u: f64) -> Level {
    let alpha_bar = (-(0.1 * u + 0.5 * (20.0 - 0.1) * u * u)).exp();
    Level {
        alpha: alpha_bar.sqrt(),
        sigma: (1.0 - alpha_bar).sqrt(),
    }
}

/// D(t) = sqrt((1 - t)^2 S^2 + t^2), the flow marginal's standard deviation.
fn flow_std(t: f64) -> f64 {
    ((1.0 - t).powi(2) * S * S + t * t).sqrt()
}

/// The exact flow state at time t: (1 - t) M + D(t) z.
pub fn flow_state(z: &Tensor, t: f64) -> Tensor {
    z * flow_std(t) + (1.0 - t) * M
}

/// The exact velocity at (x, t): -M + z (t - (1 - t) S^2) / D(t), with z = (x - (1 - t) M) / D(t).
pub fn flow_velocity(x: &Tensor, t: f64) -> Tensor {
    let d = flow_std(t);
    (x - (1.0 - t) * M) * ((t - (1.0 - t) * S * S) / (d * d)) - M
}

/// Largest absolute difference.
pub fn max_error(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).expect("max")
}

/// error[k] / error[k + 1]: about 2^p when each error comes from twice the steps of the one before, for order p.
pub fn ratios(errors: &[f64]) -> Vec<f64> {
    errors.windows(2).map(|w| w[0] / w[1]).collect()
}

/// Asserts that every ratio lies in `range`, after printing them (so they can be quoted).
pub fn assert_ratios(name: &str, steps: &[usize], errors: &[f64], range: std::ops::RangeInclusive<f64>) {
    let ratios = ratios(errors);
    let errors: Vec<String> = errors.iter().map(|e| format!("{e:.3e}")).collect();
    eprintln!("{name}: steps {steps:?}, errors {errors:?}, ratios {ratios:.2?}");
    for r in &ratios {
        assert!(
            range.contains(r),
            "{name}: error ratio {r:.2} not in {range:?} (errors {errors:?})"
        );
    }
}

#[test]
fn the_closed_forms_agree_with_each_other() {
    // The noise prediction reproduces the state it came from: x = alpha x0_hat + sigma eps with the exact x0_hat.
    let z = z();
    let level = vp_level(0.4);
    let x = vp_state(&z, level);
    let eps = vp_eps(&x, level);
    // Posterior mean of x0 for a Gaussian: M + alpha S^2 (x - alpha M) / (alpha^2 S^2 + sigma^2).
    let var = level.alpha.powi(2) * S * S + level.sigma.powi(2);
    let x0_mean = (&x - level.alpha * M) * (level.alpha * S * S / var) + M;
    assert!(max_error(&(x0_mean * level.alpha + &eps * level.sigma), &x) < 1e-12);
    // The velocity is the time derivative of the exact state (central difference).
    let h = 1e-6;
    let slope = (flow_state(&z, 0.5 + h) - flow_state(&z, 0.5 - h)) / (2.0 * h);
    assert!(max_error(&slope, &flow_velocity(&flow_state(&z, 0.5), 0.5)) < 1e-8);
}
