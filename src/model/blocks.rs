//! The building blocks of the course assignment's UNet, each with the shapes it maps between.
//!
//! Every convolution is followed by BatchNorm2d and GELU, except the UNet's last one. BatchNorm weights start at
//! one (PyTorch's default; tch's own default is uniform in [0, 1]), so the network starts where PyTorch's does.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::runtime::bn_gelu;

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
    /// In training, BatchNorm and GELU run as one fused op where it applies (CPU fp32, [`bn_gelu`]). In eval mode
    /// BatchNorm is an affine map per channel, folded into the convolution's weights and bias, so sampling runs
    /// one convolution instead of a convolution and a normalisation pass.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if !train {
            return self.forward_folded(x).gelu("none");
        }
        let z = self.conv(x);
        bn_gelu::batch_norm_gelu_train(&z, &self.norm, BN_MOMENTUM, BN_EPS)
            .unwrap_or_else(|| self.norm.forward_t(&z, true).gelu("none"))
    }

    fn conv(&self, x: &Tensor) -> Tensor {
        match &self.conv {
            ConvKind::Conv(c) => x.apply(c),
            ConvKind::Transposed(c) => x.apply(c),
        }
    }

    /// conv then eval-mode BatchNorm as one convolution: with s = gamma / sqrt(var + eps) per output channel,
    /// weight' = weight * s and bias' = (bias - mean) * s + beta.
    fn forward_folded(&self, x: &Tensor) -> Tensor {
        let norm = &self.norm;
        let ones = || norm.running_var.ones_like();
        let gamma = norm.ws.as_ref().map_or_else(ones, Tensor::shallow_clone);
        let beta = norm
            .bs
            .as_ref()
            .map_or_else(|| norm.running_mean.zeros_like(), Tensor::shallow_clone);
        let scale = gamma / (&norm.running_var + BN_EPS).sqrt(); // [o]
        let folded_bias = |bias: &Option<Tensor>| {
            let bias = bias
                .as_ref()
                .map_or_else(|| norm.running_mean.zeros_like(), Tensor::shallow_clone);
            (bias - &norm.running_mean) * &scale + beta
        };
        let (_, stride, padding) = self.resample.geometry();
        match &self.conv {
            ConvKind::Conv(c) => {
                let weight = &c.ws * scale.view([-1, 1, 1, 1]); // [o, i, k, k]
                let bias = folded_bias(&c.bs);
                x.conv2d(&weight, Some(&bias), [stride, stride], [padding, padding], [1, 1], 1)
            }
            ConvKind::Transposed(c) => {
                let weight = &c.ws * scale.view([1, -1, 1, 1]); // [i, o, k, k]
                x.conv_transpose2d(
                    &weight,
                    Some(&folded_bias(&c.bs)),
                    [stride, stride],
                    [padding, padding],
                    [0, 0],
                    1,
                    [1, 1],
                )
            }
        }
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
        self.second.forward_t(&self.first.forward_t(x, train), train)
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

    /// The folded eval path gives what conv followed by eval-mode BatchNorm gives, for every resampling.
    #[test]
    fn folded_batch_norm_matches_conv_then_norm() {
        tch::manual_seed(3);
        for (resample, c_in, size) in [
            (Resample::Same, 3, 8),
            (Resample::Down, 3, 8),
            (Resample::Up, 3, 4),
            (Resample::Unflatten, 3, 1),
        ] {
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
            let expected = block.norm.forward_t(&block.conv(&x), false).gelu("none");
            let folded = block.forward_t(&x, false);
            assert_eq!(folded.size(), expected.size(), "{resample:?}");
            assert!(folded.allclose(&expected, 1e-4, 1e-5, false), "{resample:?}");
        }
    }
}
