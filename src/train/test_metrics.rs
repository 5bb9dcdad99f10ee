//! Held-out numbers a run prints and records after each epoch (`RUN_DIR/metrics.csv`).
//!
//! Part 1: the test-set MSE of the denoiser's output against the clean digits, next to the MSE of the noisy input
//! itself (sigma^2 on average), on a fixed subset of test digits with fixed noise so epochs compare fairly.

use tch::{Kind, Tensor};

use crate::model::Model;
use crate::runtime::precision::{autocast, Precision};
use crate::runtime::rng::RunRng;

/// Test digits used for the held-out MSE (the first N of the test split).
pub const TEST_MSE_IMAGES: i64 = 1000;
const BATCH: i64 = 250;
const NOISE_SEED: u64 = 0x7e57;

/// (MSE of the denoised output, MSE of the noisy input) against the clean images. images: [N, 1, 28, 28] in [0, 1].
pub fn denoiser_test_mse(model: &Model, images: &Tensor, sigma: f64, precision: Precision) -> (f64, f64) {
    let n = images.size()[0].min(TEST_MSE_IMAGES);
    let device = model.device();
    let mut rng = RunRng::new(NOISE_SEED);
    let (mut denoised, mut noisy) = (0.0, 0.0);
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let len = BATCH.min(n - start);
            let x = images.narrow(0, start, len).to_device(device);
            let z = &x + rng.normal_tensor(&x.size(), device) * sigma;
            let out = autocast(precision, device, || model.forward_t(&z, None, None, false)).to_kind(Kind::Float);
            denoised += sum_sq(&(out - &x));
            noisy += sum_sq(&(&z - &x));
            start += len;
        }
    });
    let count = (n * 28 * 28) as f64;
    (denoised / count, noisy / count)
}

fn sum_sq(t: &Tensor) -> f64 {
    t.square().sum(Kind::Double).double_value(&[])
}
