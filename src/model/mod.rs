//! The denoising networks. A model maps (x_t, t, class) to a prediction and knows nothing of noise schedules.
//!
//! [`UNetConfig`] is the serialisable description saved beside every checkpoint; [`Model`] is built from it and owns
//! its weights (a tch `VarStore`), so that a resumed run rebuilds exactly the network it saved.

pub mod blocks;
pub mod improved;
pub mod matmul_conv;
pub mod tuning;
pub mod unet;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::io::tensor_file::{self, TensorFileError};
use crate::runtime::layout::{self, Layout};
use improved::ImprovedUNet;
use unet::BasicUNet;

/// Which network family.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// the course assignment's UNet (BatchNorm, GELU, an FCBlock per conditioning input).
    Basic,
    /// Residual blocks with GroupNorm, a sinusoidal time embedding and conditioning at every resolution
    /// (see [`improved`]).
    Improved,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Basic => "basic",
            Arch::Improved => "improved",
        }
    }
}

/// Hyperparameters that define a network; saved with every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UNetConfig {
    pub arch: Arch,
    /// D, the hidden width.
    pub hidden: i64,
    pub time_cond: bool,
    pub class_cond: bool,
    pub num_classes: i64,
}

impl UNetConfig {
    /// The basic (the assignment's) architecture; see [`UNetConfig::with_arch`].
    pub fn new(hidden: i64, time_cond: bool, class_cond: bool) -> Self {
        Self {
            arch: Arch::Basic,
            hidden,
            time_cond,
            class_cond,
            num_classes: 10,
        }
    }

    pub fn with_arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }
}

#[derive(Debug)]
enum Net {
    Basic(Box<BasicUNet>),
    Improved(Box<ImprovedUNet>),
}

/// A network and its weights.
#[derive(Debug)]
pub struct Model {
    pub config: UNetConfig,
    layout: Layout,
    vs: nn::VarStore,
    net: Net,
}

impl Model {
    /// A freshly initialised network. Initialisation draws from libtorch's CPU generator (seed it first with
    /// `tch::manual_seed` for a reproducible start) and then moves to `device`, so a seed gives the same initial
    /// weights on every device.
    pub fn new(config: &UNetConfig, device: Device) -> Self {
        Self::with_layout(config, device, Layout::default())
    }

    /// [`Model::new`] with the weights and activations in `layout`.
    pub fn with_layout(config: &UNetConfig, device: Device, layout: Layout) -> Self {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = match config.arch {
            Arch::Basic => Net::Basic(Box::new(BasicUNet::new(&vs.root(), config))),
            Arch::Improved => Net::Improved(Box::new(ImprovedUNet::new(&vs.root(), config))),
        };
        // Convolution weights live in the activations' layout (they are created contiguous).
        if layout == Layout::ChannelsLast {
            for (_, t) in vs.variables() {
                layout::make_channels_last(&t);
            }
        }
        if device != Device::Cpu {
            vs.set_device(device);
        }
        Self {
            config: config.clone(),
            layout,
            vs,
            net,
        }
    }

    /// The same weights (and BatchNorm statistics) in a model whose weights and activations are in `layout`.
    pub fn in_layout(&self, layout: Layout) -> Model {
        let copy = Model::with_layout(&self.config, self.device(), layout);
        let source = self.named_variables();
        tch::no_grad(|| {
            for (name, mut target) in copy.named_variables() {
                // copy_ keeps the target's strides: the values arrive in its layout.
                target.copy_(&source[&name]);
            }
        });
        copy
    }

    /// x [N, 1, 28, 28], t [N] in [0, 1], class [N, classes] one-hot (zeros = unconditional) -> [N, 1, 28, 28].
    /// Inputs the config does not use are ignored. `train` selects batch statistics in the basic UNet's
    /// BatchNorm; the improved UNet has no train/eval difference.
    pub fn forward_t(&self, x: &Tensor, t: Option<&Tensor>, class: Option<&Tensor>, train: bool) -> Tensor {
        let x = self.layout.apply(x);
        match &self.net {
            Net::Basic(net) => net.forward_t(&x, t, class, train),
            Net::Improved(net) => net.forward(&x, t, class),
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Every variable (weights and BatchNorm running statistics), by name, in name order.
    pub fn named_variables(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// The trainable parameters, by name, in name order.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }

    pub fn parameter_count(&self) -> i64 {
        self.named_parameters().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    pub fn save(&self, path: &Path) -> Result<(), TensorFileError> {
        tensor_file::write(path, &self.named_variables())
    }

    /// Loads weights saved by [`Model::save`], refusing files with missing, extra or misshapen tensors.
    pub fn load(&mut self, path: &Path) -> Result<(), TensorFileError> {
        tensor_file::load_into(path, &self.named_variables())
    }

    /// Sets every parameter's gradient to zero (or drops it).
    pub fn zero_grad(&mut self) {
        for (_, mut p) in self.named_parameters() {
            p.zero_grad();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// The chosen layout is the weights' and the activations': channels-last lays every 4-D weight out NHWC,
    /// contiguous none, and the two compute the same outputs up to rounding.
    #[test]
    fn the_layout_is_the_weights_and_the_outputs_agree() {
        let config = UNetConfig::new(8, true, true);
        let nhwc = Model::with_layout(&config, Device::Cpu, Layout::ChannelsLast);
        // The same weights in both (copied, not reseeded: other tests draw from the global generator meanwhile).
        let nchw = nhwc.in_layout(Layout::Contiguous);
        let weights_4d = |m: &Model| -> Vec<bool> {
            m.named_variables()
                .values()
                .filter(|t| t.dim() == 4 && t.size()[1] > 1 && t.size()[2] > 1)
                .map(layout::is_channels_last)
                .collect()
        };
        assert!(!weights_4d(&nhwc).is_empty() && weights_4d(&nhwc).iter().all(|&cl| cl));
        assert!(weights_4d(&nchw).iter().all(|&cl| !cl));
        assert_eq!(
            (nhwc.layout(), nchw.layout()),
            (Layout::ChannelsLast, Layout::Contiguous)
        );
        let x = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let t = Tensor::rand([3], (Kind::Float, Device::Cpu));
        let class = Tensor::eye(10, (Kind::Float, Device::Cpu)).narrow(0, 0, 3);
        let out = |m: &Model| tch::no_grad(|| m.forward_t(&x, Some(&t), Some(&class), false));
        let (a, b) = (out(&nhwc), out(&nchw));
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "layouts disagree by {diff}");
    }

    /// Trainable parameters of the spec's UNet, from an independent PyTorch build (the assignment's table).
    #[test]
    fn parameter_counts_match_the_independent_pytorch_count() {
        for (hidden, time, class, expected) in [
            (64, false, false, 1_975_361),
            (64, true, false, 1_996_417),
            (64, true, true, 2_019_201),
            (128, false, false, 7_891_073),
            (128, true, false, 7_974_145),
            (128, true, true, 8_060_673),
        ] {
            let model = Model::new(&UNetConfig::new(hidden, time, class), Device::Cpu);
            assert_eq!(
                model.parameter_count(),
                expected,
                "D={hidden} time={time} class={class}"
            );
        }
    }

    /// The unconditional count by hand, D=128: conv(i,o,k) has i*o*k*k+o, BatchNorm(o) 2o, Linear(i,o) i*o+o.
    #[test]
    fn unconditional_count_by_hand() {
        let d: i64 = 128;
        let conv = |i: i64, o: i64, k: i64| i * o * k * k + o;
        let cba = |i, o, k| conv(i, o, k) + 2 * o; // conv + BatchNorm
        let conv_block = |i, o| cba(i, o, 3) + cba(o, o, 3);
        let expected = conv_block(1, d) // input
            + cba(d, d, 3) + conv_block(d, d) // down1
            + cba(d, 2 * d, 3) + conv_block(2 * d, 2 * d) // down2
            + cba(2 * d, 2 * d, 7) // unflatten
            + cba(4 * d, d, 4) + conv_block(d, d) // up1
            + cba(2 * d, d, 4) + conv_block(d, d) // up2
            + conv_block(2 * d, d) // output
            + conv(d, 1, 3); // last
        let model = Model::new(&UNetConfig::new(d, false, false), Device::Cpu);
        assert_eq!(model.parameter_count(), expected);
    }

    /// The improved UNet stays within 1.5x the basic one's parameters at the cfg size (issue 4's fairness rule).
    #[test]
    fn improved_parameter_count_is_within_one_and_a_half_times_basic() {
        let basic = Model::new(&UNetConfig::new(64, true, true), Device::Cpu).parameter_count();
        let improved = Model::new(&UNetConfig::new(64, true, true).with_arch(Arch::Improved), Device::Cpu);
        let improved = improved.parameter_count();
        assert!(improved as f64 <= 1.5 * basic as f64, "{improved} vs {basic}");
        assert!(improved > basic, "{improved} vs {basic}");
    }

    #[test]
    fn output_shape_matches_input_for_every_conditioning() {
        let x = Tensor::randn([3, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.1f32, 0.5, 0.9]);
        let c = Tensor::eye(10, (tch::Kind::Float, Device::Cpu)).narrow(0, 0, 3);
        for arch in [Arch::Basic, Arch::Improved] {
            for (hidden, time, class) in [(8, false, false), (8, true, false), (8, true, true), (12, true, true)] {
                let model = Model::new(&UNetConfig::new(hidden, time, class).with_arch(arch), Device::Cpu);
                let y = model.forward_t(&x, time.then_some(&t), class.then_some(&c), true);
                assert_eq!(y.size(), vec![3, 1, 28, 28]);
                let y = model.forward_t(&x, time.then_some(&t), class.then_some(&c), false);
                assert_eq!(y.size(), vec![3, 1, 28, 28]);
            }
        }
    }

    /// Adds noise to every weight. The improved UNet's residual branches and output start at zero; perturbed, a
    /// test sees a general network.
    fn perturb(model: &Model) {
        tch::no_grad(|| {
            for (_, mut p) in model.named_parameters() {
                let _ = p.g_add_(&(p.randn_like() * 0.1));
            }
        });
    }

    /// GroupNorm has no running statistics: the improved UNet gives the same output in train and eval mode, and
    /// one image's output does not depend on the rest of the batch.
    #[test]
    fn improved_output_has_no_train_eval_or_batch_dependence() {
        tch::manual_seed(1);
        let model = Model::new(&UNetConfig::new(8, true, true).with_arch(Arch::Improved), Device::Cpu);
        perturb(&model);
        let x = Tensor::randn([4, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.1f32, 0.4, 0.6, 0.9]);
        let c = Tensor::eye(10, (tch::Kind::Float, Device::Cpu)).narrow(0, 0, 4);
        let train = model.forward_t(&x, Some(&t), Some(&c), true);
        let eval = model.forward_t(&x, Some(&t), Some(&c), false);
        assert!(train.allclose(&eval, 0.0, 0.0, false));
        let alone = model.forward_t(
            &x.narrow(0, 0, 1),
            Some(&t.narrow(0, 0, 1)),
            Some(&c.narrow(0, 0, 1)),
            false,
        );
        assert!(alone.allclose(&eval.narrow(0, 0, 1), 1e-5, 1e-5, false));
        assert!(f64::try_from(eval.abs().max()).unwrap_or(0.0) > 1e-3);
    }

    #[test]
    fn conditioning_changes_the_output() {
        tch::manual_seed(0);
        for arch in [Arch::Basic, Arch::Improved] {
            conditioning_changes_the_output_of(arch);
        }
    }

    fn conditioning_changes_the_output_of(arch: Arch) {
        let model = Model::new(&UNetConfig::new(8, true, true).with_arch(arch), Device::Cpu);
        if arch == Arch::Improved {
            perturb(&model);
        }
        let x = Tensor::randn([2, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let c = Tensor::eye(10, (tch::Kind::Float, Device::Cpu)).narrow(0, 0, 2);
        let a = model.forward_t(&x, Some(&Tensor::from_slice(&[0.1f32, 0.1])), Some(&c), false);
        let b = model.forward_t(&x, Some(&Tensor::from_slice(&[0.9f32, 0.9])), Some(&c), false);
        let u = model.forward_t(
            &x,
            Some(&Tensor::from_slice(&[0.1f32, 0.1])),
            Some(&c.zeros_like()),
            false,
        );
        assert!(f64::try_from((&a - &b).abs().max()).unwrap_or(0.0) > 1e-6);
        assert!(f64::try_from((&a - &u).abs().max()).unwrap_or(0.0) > 1e-6);
    }
}
