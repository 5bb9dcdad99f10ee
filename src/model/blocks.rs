//! The building blocks of the course assignment's UNet, each with the shapes it maps between.
//!
//! Every convolution is followed by BatchNorm2d and GELU, except the UNet's last one. BatchNorm weights start at
//! one (PyTorch's default; tch's own default is uniform in [0, 1]), so the network starts where PyTorch's does.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::matmul_conv;
use crate::runtime::bn_gelu;
use crate::runtime::conv_gelu::{conv_gelu, Direction};

fn batch_norm(path: nn::Path, channels: i64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        momentum: BN_MOMENTUM,
        eps: BN_EPS,
        ..Default::default()
    };
    nn::batch_norm2d(path, channels, config)
}

/// How a [`ConvNormAct`] resamples: same size, halve (stride-2 conv), double (4x4 transposed conv, stride 2) or
/// 1x1 -> 7x7 (the UNet's Unflatten).
#[derive(Clone, Copy, Debug)]
pub enum Resample {
    Same,
    Down,
    Up,
    Unflatten,
}

/// BatchNorm's epsilon and running-statistics momentum (PyTorch's and tch's defaults).
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// conv (or transposed conv), BatchNorm2d, GELU.
#[derive(Debug)]
pub struct ConvNormAct {
    conv: ConvKind,
    norm: nn::BatchNorm,
    resample: Resample,
}

#[derive(Debug)]
enum ConvKind {
    Conv(nn::Conv2D),
    Transposed(nn::ConvTranspose2D),
}

impl Resample {
    /// (kernel, stride, padding) of the convolution (Same, Down) or transposed convolution (Up, Unflatten).
    fn geometry(self) -> (i64, i64, i64) {
        match self {
            Resample::Same => (3, 1, 1),
            Resample::Down => (3, 2, 1),
            Resample::Up => (4, 2, 1),
            Resample::Unflatten => (7, 7, 0),
        }
    }
}

impl ConvNormAct {
    pub fn new(path: nn::Path, c_in: i64, c_out: i64, resample: Resample) -> Self {
        let (kernel, stride, padding) = resample.geometry();
        let conv = match resample {
            Resample::Same | Resample::Down => {
                let config = nn::ConvConfig {
                    stride,
                    padding,
                    ..Default::default()
                };
                ConvKind::Conv(nn::conv2d(&path / "conv", c_in, c_out, kernel, config))
            }
            Resample::Up | Resample::Unflatten => {
                let config = nn::ConvTransposeConfig {
                    stride,
                    padding,
                    ..Default::default()
                };
                ConvKind::Transposed(nn::conv_transpose2d(&path / "conv", c_in, c_out, kernel, config))
            }
        };
        Self {
            conv,
            norm: batch_norm(&path / "norm", c_out),
            resample,
        }
    }

    /// Same: [N, i, H, W] -> [N, o, H, W]; Down: -> [N, o, H/2, W/2]; Up: -> [N, o, 2H, 2W];
    /// Unflatten: [N, i, 1, 1] -> [N, o, 7, 7].
    ///
    /// In training, BatchNorm and GELU run as one fused op where it applies (CPU fp32 or bf16, [`bn_gelu`]), with the
    /// convolution's bias left out of the convolution and given to the op for the running mean (it cancels from
    /// BatchNorm's output). In eval mode BatchNorm is an affine map per channel, folded into the convolution's
    /// weights and bias, so sampling runs one convolution instead of a convolution and a normalisation pass.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_cat_t(&[x], train)
    }

    /// [`Self::forward_t`] of the concatenation of `parts` along the channels, without the concatenated copy: the
    /// convolution of a concatenation is the sum of each part's convolution by its slice of the weight.
    ///
    /// Only sampling takes that path and the matrix-product forms ([`matmul_conv`]): training convolves the
    /// concatenation with libtorch's kernels. Whole `diffuse train` runs with them were 1.08-1.24x slower in 3
    /// interleaved pairs and 0.99x (0.84-1.09) in 5 more, although each form was faster timed alone: no gain shows
    /// through this host's noise, so training keeps the kernels it had (README, Performance).
    pub fn forward_cat_t(&self, parts: &[&Tensor], train: bool) -> Tensor {
        if !train {
            return self.forward_folded(parts);
        }
        let concatenated;
        let x = match parts {
            [x] => *x,
            _ => {
                concatenated = Tensor::cat(parts, 1);
                &concatenated
            }
        };
        let (weight, bias) = self.conv_parameters();
        if !bn_gelu::applies_to_input(x) {
            return self
                .norm
                .forward_t(&self.libtorch_conv(x, weight, bias), true)
                .gelu("none");
        }
        let z = self.libtorch_conv(x, weight, None);
        bn_gelu::batch_norm_gelu_train(&z, &self.norm, bias, BN_MOMENTUM, BN_EPS).unwrap_or_else(|| {
            // (in z's type: a bf16 z plus an fp32 bias would promote to fp32)
            let z = bias.map_or_else(|| z.shallow_clone(), |b| (&z + b.view([1, -1, 1, 1])).to_kind(z.kind()));
            self.norm.forward_t(&z, true).gelu("none")
        })
    }

    fn conv_parameters(&self) -> (&Tensor, Option<&Tensor>) {
        match &self.conv {
            ConvKind::Conv(c) => (&c.ws, c.bs.as_ref()),
            ConvKind::Transposed(c) => (&c.ws, c.bs.as_ref()),
        }
    }

    /// This block's convolution (or transposed convolution) of the channel-wise concatenation of `parts`, with the
    /// given weight and bias, for sampling: each part by its slice of the weight's input channels, summed, and the
    /// matrix-product forms where they apply.
    fn conv_with(&self, parts: &[&Tensor], weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let [x] = parts else {
            // Input channels are dimension 1 of a convolution's weight [o, i, k, k], 0 of a transposed one's.
            let dim = match self.conv {
                ConvKind::Conv(_) => 1,
                ConvKind::Transposed(_) => 0,
            };
            let mut offset = 0;
            let mut sum: Option<Tensor> = None;
            for part in parts {
                let channels = part.size()[1];
                let slice = weight.narrow(dim, offset, channels);
                offset += channels;
                let y = self.conv_with(&[part], &slice, if sum.is_none() { bias } else { None });
                sum = Some(sum.map_or(y.shallow_clone(), |s| s + y));
            }
            return sum.expect("at least one part");
        };
        self.matmul_conv(x, weight, bias)
            .unwrap_or_else(|| self.libtorch_conv(x, weight, bias))
    }

    /// This block's convolution of `x` as a matrix product ([`matmul_conv`]), where one applies; else None.
    fn matmul_conv(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
        match self.resample {
            Resample::Same => matmul_conv::conv_from_one_channel(x, weight, bias),
            Resample::Unflatten => matmul_conv::conv_transpose_of_1x1(x, weight, bias),
            Resample::Down | Resample::Up => None,
        }
    }

    /// This block's convolution (or transposed convolution) of `x` by libtorch's own kernels.
    fn libtorch_conv(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (_, stride, padding) = self.resample.geometry();
        match &self.conv {
            ConvKind::Conv(_) => x.conv2d(weight, bias, [stride, stride], [padding, padding], [1, 1], 1),
            ConvKind::Transposed(_) => {
                x.conv_transpose2d(weight, bias, [stride, stride], [padding, padding], [0, 0], 1, [1, 1])
            }
        }
    }

    /// conv, eval-mode BatchNorm and GELU: the first two as one convolution (with s = gamma / sqrt(var + eps) per
    /// output channel, weight' = weight * s and bias' = (bias - mean) * s + beta), GELU inside it where oneDNN can
    /// apply it as a post-op ([`conv_gelu`]: on the CPU under no-grad, in fp32 or under bf16 autocast; the
    /// matrix-product forms of one input channel and of the Unflatten keep their own).
    fn forward_folded(&self, parts: &[&Tensor]) -> Tensor {
        let norm = &self.norm;
        let ones = || norm.running_var.ones_like();
        let gamma = norm.ws.as_ref().map_or_else(ones, Tensor::shallow_clone);
        let beta = norm
            .bs
            .as_ref()
            .map_or_else(|| norm.running_mean.zeros_like(), Tensor::shallow_clone);
        let scale = gamma / (&norm.running_var + BN_EPS).sqrt(); // [o]
        let (weight, bias) = self.conv_parameters();
        let bias = bias.map_or_else(|| norm.running_mean.zeros_like(), Tensor::shallow_clone);
        let folded_bias = (bias - &norm.running_mean) * &scale + beta;
        // [o, i, k, k] for a convolution, [i, o, k, k] for a transposed one
        let weight = match &self.conv {
            ConvKind::Conv(_) => weight * scale.view([-1, 1, 1, 1]),
            ConvKind::Transposed(_) => weight * scale.view([1, -1, 1, 1]),
        };
        let (_, stride, padding) = self.resample.geometry();
        let direction = match self.conv {
            ConvKind::Conv(_) => Direction::Forward,
            ConvKind::Transposed(_) => Direction::Transposed,
        };
        let single = match parts {
            [x] => self
                .matmul_conv(x, &weight, Some(&folded_bias))
                .map(|y| y.gelu("none"))
                .or_else(|| conv_gelu(x, &weight, Some(&folded_bias), stride, padding, direction)),
            _ => None,
        };
        single.unwrap_or_else(|| self.conv_with(parts, &weight, Some(&folded_bias)).gelu("none"))
    }
}

/// ConvBlock(i, o) = Conv(i, o), Conv(o, o): [N, i, H, W] -> [N, o, H, W].
#[derive(Debug)]
pub struct ConvBlock {
    first: ConvNormAct,
    second: ConvNormAct,
}

impl ConvBlock {
    pub fn new(path: nn::Path, c_in: i64, c_out: i64) -> Self {
        Self {
            first: ConvNormAct::new(&path / "0", c_in, c_out, Resample::Same),
            second: ConvNormAct::new(&path / "1", c_out, c_out, Resample::Same),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_cat_t(&[x], train)
    }

    /// [`Self::forward_t`] of the concatenation of `parts` along the channels ([`ConvNormAct::forward_cat_t`]).
    pub fn forward_cat_t(&self, parts: &[&Tensor], train: bool) -> Tensor {
        self.second.forward_t(&self.first.forward_cat_t(parts, train), train)
    }
}

/// DownBlock(i, o) = DownConv(i, o), ConvBlock(o, o), and UpBlock(i, o) = UpConv(i, o), ConvBlock(o, o):
/// [N, i, H, W] -> [N, o, H/2, W/2] or [N, o, 2H, 2W].
#[derive(Debug)]
pub struct ResampleBlock {
    resample: ConvNormAct,
    block: ConvBlock,
}

impl ResampleBlock {
    pub fn down(path: nn::Path, c_in: i64, c_out: i64) -> Self {
        Self::new(path, c_in, c_out, Resample::Down)
    }

    pub fn up(path: nn::Path, c_in: i64, c_out: i64) -> Self {
        Self::new(path, c_in, c_out, Resample::Up)
    }

    fn new(path: nn::Path, c_in: i64, c_out: i64, resample: Resample) -> Self {
        Self {
            resample: ConvNormAct::new(&path / "resample", c_in, c_out, resample),
            block: ConvBlock::new(&path / "block", c_out, c_out),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.block.forward_t(&self.resample.forward_t(x, train), train)
    }
}

/// FCBlock(i, o) = Linear(i, o), GELU, Linear(o, o): [N, i] -> [N, o, 1, 1], ready to broadcast over H and W.
#[derive(Debug)]
pub struct FcBlock {
    first: nn::Linear,
    second: nn::Linear,
}

impl FcBlock {
    pub fn new(path: nn::Path, c_in: i64, c_out: i64) -> Self {
        Self {
            first: nn::linear(&path / "0", c_in, c_out, Default::default()),
            second: nn::linear(&path / "1", c_out, c_out, Default::default()),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.apply(&self.first).gelu("none").apply(&self.second); // [N, o]
        let n = y.size()[0];
        y.view([n, -1, 1, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Every resampling, with input channels and an input size it fits (one input channel: the UNet's first
    /// convolution, a matrix product on the CPU).
    const RESAMPLES: [(Resample, i64, i64); 5] = [
        (Resample::Same, 3, 8),
        (Resample::Same, 1, 8),
        (Resample::Down, 3, 8),
        (Resample::Up, 3, 4),
        (Resample::Unflatten, 3, 1),
    ];

    /// The folded eval path gives what conv followed by eval-mode BatchNorm gives, for every resampling.
    #[test]
    fn folded_batch_norm_matches_conv_then_norm() {
        tch::manual_seed(3);
        for (resample, c_in, size) in RESAMPLES {
            let vs = nn::VarStore::new(Device::Cpu);
            let block = ConvNormAct::new(vs.root(), c_in, 5, resample);
            let x = Tensor::randn([4, c_in, size, size], (Kind::Float, Device::Cpu));
            // Train-mode passes give the running statistics non-trivial values; perturb gamma and beta too.
            for _ in 0..5 {
                let _ = block.forward_t(&(&x * 3.0 + 1.0), true);
            }
            tch::no_grad(|| {
                for (_, mut v) in vs.variables() {
                    let _ = v.g_add_(&(v.randn_like() * 0.2));
                }
            });
            let (weight, bias) = block.conv_parameters();
            let expected = block
                .norm
                .forward_t(&block.libtorch_conv(&x, weight, bias), false)
                .gelu("none");
            // Under no-grad (sampling) GELU runs inside the convolution where it can; recording, it cannot.
            for folded in [tch::no_grad(|| block.forward_t(&x, false)), block.forward_t(&x, false)] {
                assert_eq!(folded.size(), expected.size(), "{resample:?}");
                assert!(folded.allclose(&expected, 1e-4, 1e-5, false), "{resample:?}");
            }
        }
    }

    /// A training pass (the fused op, the convolution's bias given to it instead) gives what conv with its bias,
    /// train-mode BatchNorm and GELU give: output, running statistics and the weight's gradient; the bias, which
    /// cancels from BatchNorm's output, gets no gradient.
    #[test]
    fn training_pass_matches_conv_then_norm_then_gelu() {
        tch::manual_seed(5);
        for (resample, c_in, size) in RESAMPLES {
            let vs = nn::VarStore::new(Device::Cpu);
            let block = ConvNormAct::new(vs.root(), c_in, 5, resample);
            let (weight, bias) = block.conv_parameters();
            let bias = bias.expect("conv bias").shallow_clone();
            tch::no_grad(|| bias.shallow_clone().copy_(&(bias.randn_like() + 2.0)));
            let x = Tensor::randn([4, c_in, size, size], (Kind::Float, Device::Cpu));
            let dy = Tensor::randn_like(&block.forward_t(&x, false));
            let running = |b: &ConvNormAct| (b.norm.running_mean.copy(), b.norm.running_var.copy());
            let (mean0, var0) = running(&block);

            // libtorch's ops on copies of the statistics
            let (mean, var) = (mean0.copy(), var0.copy());
            let z = block.conv_with(&[&x], weight, Some(&bias));
            let norm = &block.norm;
            let expected = Tensor::batch_norm(
                &z,
                norm.ws.as_ref(),
                norm.bs.as_ref(),
                Some(&mean),
                Some(&var),
                true,
                BN_MOMENTUM,
                BN_EPS,
                false,
            )
            .gelu("none");
            let expected_grad = Tensor::run_backward(&[(&expected * &dy).sum(Kind::Float)], &[weight], false, false);

            let got = block.forward_t(&x, true);
            (&got * &dy).sum(Kind::Float).backward();
            // Sums over the batch differ in their last bits between summation orders, by amounts that scale with
            // the largest value rather than with each element: 1e-4 relative plus 1e-6 of the largest.
            let close = |a: &Tensor, b: &Tensor| {
                let scale = b.abs().max().double_value(&[]).max(1.0);
                a.allclose(b, 1e-4, 1e-6 * scale, false)
            };
            assert!(close(&got, &expected), "{resample:?}: output");
            let (got_grad, expected_grad) = (weight.grad(), &expected_grad[0]);
            assert!(
                close(&got_grad, expected_grad),
                "{resample:?}: weight gradient off by {} (largest {})",
                (&got_grad - expected_grad).abs().max().double_value(&[]),
                expected_grad.abs().max().double_value(&[])
            );
            let (mean1, var1) = running(&block);
            assert!(
                close(&mean1, &mean) && close(&var1, &var),
                "{resample:?}: running statistics"
            );
            assert!(!bias.grad().defined(), "{resample:?}: the bias has no gradient");
        }
    }

    /// A block given the parts of a concatenation gives what it gives the concatenation: output (train and eval),
    /// running statistics, and the gradients of the weight and of each part.
    #[test]
    fn parts_give_what_their_concatenation_gives() {
        tch::manual_seed(9);
        for (resample, size) in [(Resample::Same, 8), (Resample::Up, 4)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let block = ConvNormAct::new(vs.root(), 5, 4, resample);
            let opts = (Kind::Float, Device::Cpu);
            let a = Tensor::randn([3, 2, size, size], opts).set_requires_grad(true);
            let b = Tensor::randn([3, 3, size, size], opts).set_requires_grad(true);
            let (weight, _) = block.conv_parameters();
            let run = |whole: bool| {
                for t in [&a, &b, weight] {
                    t.shallow_clone().zero_grad();
                }
                let y = if whole {
                    block.forward_t(&Tensor::cat(&[&a, &b], 1), true)
                } else {
                    block.forward_cat_t(&[&a, &b], true)
                };
                (&y * y.ones_like().cumsum(1, Kind::Float)).sum(Kind::Float).backward();
                let eval = if whole {
                    block.forward_t(&Tensor::cat(&[&a, &b], 1), false)
                } else {
                    block.forward_cat_t(&[&a, &b], false)
                };
                let stats = [block.norm.running_mean.copy(), block.norm.running_var.copy()];
                [
                    y.detach(),
                    eval.detach(),
                    a.grad().copy(),
                    b.grad().copy(),
                    weight.grad().copy(),
                ]
                .into_iter()
                .chain(stats)
                .collect::<Vec<_>>()
            };
            let whole = run(true);
            // The second run starts from the statistics the first left: put them back.
            tch::no_grad(|| {
                let _ = block.norm.running_mean.shallow_clone().fill_(0.0);
                let _ = block.norm.running_var.shallow_clone().fill_(1.0);
            });
            let split = run(false);
            let names = [
                "train output",
                "eval output",
                "grad a",
                "grad b",
                "grad weight",
                "mean",
                "var",
            ];
            for ((name, w), p) in names.iter().zip(&whole).zip(&split) {
                assert!(w.allclose(p, 1e-4, 1e-5, false), "{resample:?}: {name}");
            }
        }
    }
}
