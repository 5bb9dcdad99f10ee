//! Adam, owned by this crate so its moments can be checkpointed (tch cannot serialise `nn::Adam`'s state).
//!
//! The update is PyTorch's `torch.optim.Adam` (no weight decay, no amsgrad):
//! m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr / (1 - b1^k) * m / (sqrt(v) / sqrt(1 - b2^k) + eps),
//! with k the 1-based step count. Moments are fp32 whatever precision the forward pass ran in. The update runs in
//! ATen's fused Adam kernel (through `csrc/libtorch_shim.cpp`): one launch for all parameters on CUDA.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};
use torch_sys::C_tensor;

use crate::io::tensor_file::{self, TensorFileError};
pub use crate::run::config::AdamConfig;
use crate::runtime::raw;

pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Per-parameter step counters as the fused kernel wants them (float scalars on the parameters' device).
    step_tensors: Vec<Tensor>,
    /// Completed updates.
    pub step: i64,
}

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn diffuse_fused_adam(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: i32,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    );
}

fn handles(tensors: &[&Tensor]) -> Vec<*mut C_tensor> {
    tensors.iter().map(|t| raw(t)).collect()
}

impl Adam {
    /// `params` are (name, tensor) pairs; names key the moments in saved state.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Self {
        let exp_avg = params.iter().map(|(_, p)| p.zeros_like().detach()).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| p.zeros_like().detach()).collect();
        let step_tensors = params
            .iter()
            .map(|(_, p)| Tensor::zeros([], (Kind::Float, p.device())))
            .collect();
        Self {
            config,
            params,
            exp_avg,
            exp_avg_sq,
            step_tensors,
            step: 0,
        }
    }

    /// Drops the gradients of every parameter (before the next backward pass).
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`, from the gradients the last backward pass left (parameters without a
    /// gradient are left alone), counted in [`Adam::step`].
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        self.update(lr);
    }

    /// The device work of [`Adam::step`] alone (the per-parameter counters the kernel reads are on the device and
    /// advance here): what a captured training step replays. The caller counts the step in [`Adam::step`].
    pub fn update(&self, lr: f64) {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let live: Vec<usize> = (0..grads.len()).filter(|&i| grads[i].defined()).collect();
        fn pick<'a>(all: &'a [Tensor], live: &[usize]) -> Vec<&'a Tensor> {
            live.iter().map(|&i| &all[i]).collect()
        }
        let params: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let (p, g, m, v, s) = (
            handles(&pick(&params, &live)),
            handles(&pick(&grads, &live)),
            handles(&pick(&self.exp_avg, &live)),
            handles(&pick(&self.exp_avg_sq, &live)),
            handles(&pick(&self.step_tensors, &live)),
        );
        let AdamConfig { beta1, beta2, eps } = self.config;
        // SAFETY: every handle is a live at::Tensor owned by `params`, `grads` or `self`, all on one device, with
        // matching shapes; the shim only runs ATen's fused Adam over them.
        unsafe {
            diffuse_fused_adam(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                s.as_ptr(),
                live.len() as i32,
                lr,
                beta1,
                beta2,
                eps,
            )
        };
    }

    /// The moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`), for checkpoints.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut state = BTreeMap::new();
        for (((name, _), m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            state.insert(format!("exp_avg.{name}"), m.shallow_clone());
            state.insert(format!("exp_avg_sq.{name}"), v.shallow_clone());
        }
        state
    }

    pub fn save(&self, path: &Path) -> Result<(), TensorFileError> {
        tensor_file::write(path, &self.state_tensors())
    }

    /// Restores moments saved by [`Adam::save`] and the step count (kept in the checkpoint's state file).
    pub fn load(&mut self, path: &Path, step: i64) -> Result<(), TensorFileError> {
        tensor_file::load_into(path, &self.state_tensors())?;
        self.step = step;
        for s in &mut self.step_tensors {
            let _ = s.fill_(step as f64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Two steps on f(p) = sum(p^2) (gradient 2p) against the update written out by hand in f64.
    #[test]
    fn matches_the_adam_formula() {
        let start = [1.0f64, -2.0, 0.5];
        let p = Tensor::from_slice(&start.map(|x| x as f32)).set_requires_grad(true);
        let mut adam = Adam::new(vec![("p".into(), p.shallow_clone())], AdamConfig::default());
        let (b1, b2, eps, lr) = (0.9, 0.999, 1e-8, 0.1);
        let mut expected = start;
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        for k in 1..=2 {
            adam.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            adam.step(lr);
            for i in 0..3 {
                let g = 2.0 * expected[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let m_hat = m[i] / (1.0 - b1.powi(k));
                let v_hat = v[i] / (1.0 - b2.powi(k));
                expected[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
        }
        let got: Vec<f32> = Vec::<f32>::try_from(&p.detach()).expect("to vec");
        for i in 0..3 {
            assert!(
                (got[i] as f64 - expected[i]).abs() < 1e-6,
                "{i}: {} vs {}",
                got[i],
                expected[i]
            );
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("opt.safetensors");
        let p = Tensor::randn([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut adam = Adam::new(vec![("p".into(), p.shallow_clone())], AdamConfig::default());
        (&p * &p).sum(Kind::Float).backward();
        adam.step(0.01);
        adam.save(&path).expect("save");
        let q = p.detach().copy().set_requires_grad(true);
        let mut other = Adam::new(vec![("p".into(), q)], AdamConfig::default());
        other.load(&path, adam.step).expect("load");
        assert!(other.exp_avg[0].equal(&adam.exp_avg[0]));
        assert!(other.exp_avg_sq[0].equal(&adam.exp_avg_sq[0]));
        assert_eq!(other.step, 1);
    }
}
