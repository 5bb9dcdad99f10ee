//! Classifier-free guidance: eps = eps_uncond + gamma (eps_cond - eps_uncond).
//!
//! Both predictions come from one batched forward pass of 2N (the class half, then the all-zeros "no class" half),
//! which costs far less than two passes of N on every device.

use tch::{Device, Tensor};

use super::Denoiser;

/// Wraps a class-conditioned denoiser so that every prediction is guided with scale `gamma`.
pub struct Guided<'a> {
    pub inner: &'a dyn Denoiser,
    pub gamma: f64,
}

impl Denoiser for Guided<'_> {
    fn predict(&self, x: &Tensor, t: &Tensor, class: Option<&Tensor>) -> Tensor {
        let Some(class) = class else {
            return self.inner.predict(x, t, None);
        };
        if self.gamma == 1.0 {
            // gamma = 1 is the conditional prediction alone: skip the unconditional half.
            return self.inner.predict(x, t, Some(class));
        }
        let n = x.size()[0];
        let x2 = Tensor::cat(&[x, x], 0); // [2N, 1, 28, 28]
        let t2 = Tensor::cat(&[t, t], 0); // [2N]
        let c2 = Tensor::cat(&[class, &class.zeros_like()], 0); // [2N, 10]
        let both = self.inner.predict(&x2, &t2, Some(&c2));
        let (cond, uncond) = (both.narrow(0, 0, n), both.narrow(0, n, n));
        &uncond + (cond - &uncond) * self.gamma
    }

    fn device(&self) -> Device {
        self.inner.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tch::Kind;

    /// Returns class-sum * 1 for conditioned rows (so eps_cond = 1 for a one-hot) and 0 for "no class" rows, and
    /// counts its calls and batch sizes.
    struct Probe {
        calls: Cell<usize>,
        last_batch: Cell<i64>,
    }
    impl Denoiser for Probe {
        fn predict(&self, x: &Tensor, _t: &Tensor, class: Option<&Tensor>) -> Tensor {
            self.calls.set(self.calls.get() + 1);
            self.last_batch.set(x.size()[0]);
            let c = class.map_or_else(
                || x.zeros_like(),
                |c| c.sum_dim_intlist(1, false, Kind::Float).view([-1, 1, 1, 1]),
            );
            x.zeros_like() + c
        }
    }

    #[test]
    fn one_batched_forward_and_the_guidance_formula() {
        let probe = Probe {
            calls: Cell::new(0),
            last_batch: Cell::new(0),
        };
        let guided = Guided {
            inner: &probe,
            gamma: 5.0,
        };
        let x = Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let t = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let class = Tensor::eye(10, (Kind::Float, Device::Cpu)).narrow(0, 0, 3);
        let eps = guided.predict(&x, &t, Some(&class));
        assert_eq!(probe.calls.get(), 1);
        assert_eq!(probe.last_batch.get(), 6);
        // eps_u = 0, eps_c = 1: 0 + 5 (1 - 0) = 5 everywhere.
        assert!(eps.allclose(&(x.ones_like() * 5.0), 1e-6, 1e-6, false));
        let plain = Guided {
            inner: &probe,
            gamma: 1.0,
        }
        .predict(&x, &t, Some(&class));
        assert_eq!(probe.last_batch.get(), 3);
        assert!(plain.allclose(&x.ones_like(), 1e-6, 1e-6, false));
    }
}
