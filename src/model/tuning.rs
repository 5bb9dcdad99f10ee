//! The timer behind the per-machine choice of precision and layout ([`crate::runtime::tuning`]): one pass of the
//! assignment's cfg UNet (D=64, time and class conditioned), the way training or sampling runs it.

use std::time::Instant;

use tch::{Device, Kind, Reduction, Tensor};

use crate::runtime::precision::autocast;
use crate::runtime::tuning::{Choice, Workload};

use super::{Model, UNetConfig};

/// Training: a batch of 32, forward in training mode, MSE, backward. Sampling: a guided batch of 2 x 40 digits,
/// forward in eval mode without gradients.
const TRAIN_BATCH: i64 = 32;
const SAMPLE_BATCH: i64 = 80;

/// Best of 2 timed passes (after 1 untimed), milliseconds, on the CPU.
pub fn time_pass(workload: Workload, choice: Choice) -> f64 {
    let device = Device::Cpu;
    let model = Model::with_layout(&UNetConfig::new(64, true, true), device, choice.layout);
    let batch = match workload {
        Workload::Train => TRAIN_BATCH,
        Workload::Sample => SAMPLE_BATCH,
    };
    let x = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let t = Tensor::rand([batch], (Kind::Float, device));
    let class = Tensor::ones([batch, 10], (Kind::Float, device)) * 0.1;
    let pass = || match workload {
        Workload::Train => {
            let loss = autocast(choice.precision, device, || {
                model
                    .forward_t(&x, Some(&t), Some(&class), true)
                    .to_kind(Kind::Float)
                    .mse_loss(&x, Reduction::Mean)
            });
            loss.backward();
        }
        Workload::Sample => tch::no_grad(|| {
            let out = autocast(choice.precision, device, || {
                model.forward_t(&x, Some(&t), Some(&class), false)
            });
            let _ = out.sum(Kind::Float).double_value(&[]);
        }),
    };
    pass();
    (0..2)
        .map(|_| {
            let started = Instant::now();
            pass();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::layout::Layout;
    use crate::runtime::precision::Precision;

    /// The timer runs both kinds of work in both layouts and returns a positive duration.
    #[test]
    fn times_training_and_sampling_in_both_layouts() {
        for workload in [Workload::Train, Workload::Sample] {
            for layout in [Layout::ChannelsLast, Layout::Contiguous] {
                let ms = time_pass(
                    workload,
                    Choice {
                        precision: Precision::Fp32,
                        layout,
                    },
                );
                assert!(ms > 0.0 && ms.is_finite(), "{workload:?} {layout:?}: {ms}");
            }
        }
    }
}
