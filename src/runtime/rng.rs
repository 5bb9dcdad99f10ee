//! The run's random number generator.
//!
//! libtorch's generator state cannot be saved through tch, so every random draw of a training run (shuffles,
//! noise, timesteps, class dropout) comes from one ChaCha stream owned by the run. Its state serialises into the
//! checkpoint, which is what makes a resumed run continue the same stream and end on the same bytes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::device::upload;

/// A seeded, serialisable random stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRng {
    inner: ChaCha8Rng,
}

impl RunRng {
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A random permutation of `0..n` (Fisher-Yates), as i64 for `index_select`.
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut order: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = self.inner.random_range(0..=i);
            order.swap(i, j);
        }
        order
    }

    /// `n` standard normal values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| StandardNormal.sample(&mut self.inner)).collect()
    }

    /// A standard normal tensor of the given shape, float32, on `device`.
    pub fn normal_tensor(&mut self, shape: &[i64], device: Device) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        upload(Tensor::from_slice(&self.normals(n)).reshape(shape), device)
    }

    /// `n` integers uniform in `0..upper`.
    pub fn integers(&mut self, n: usize, upper: i64) -> Vec<i64> {
        (0..n).map(|_| self.inner.random_range(0..upper)).collect()
    }

    /// `n` floats uniform in `[0, 1)`.
    pub fn uniforms(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.inner.random::<f32>()).collect()
    }

    /// `n` Bernoulli draws with probability `p` of `true`.
    pub fn bernoullis(&mut self, n: usize, p: f64) -> Vec<bool> {
        (0..n).map(|_| self.inner.random_bool(p.clamp(0.0, 1.0))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_round_trips() {
        let mut a = RunRng::new(7);
        let mut b = RunRng::new(7);
        assert_eq!(a.permutation(100), b.permutation(100));
        let _ = a.normals(33);
        let saved = serde_json::to_string(&a).expect("serialise");
        let mut restored: RunRng = serde_json::from_str(&saved).expect("deserialise");
        assert_eq!(a.normals(10), restored.normals(10));
        assert_ne!(RunRng::new(8).permutation(100), RunRng::new(7).permutation(100));
    }

    #[test]
    fn permutation_is_a_permutation_and_normals_are_standard() {
        let mut rng = RunRng::new(1);
        let mut p = rng.permutation(1000);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
        let x = rng.normals(100_000);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
