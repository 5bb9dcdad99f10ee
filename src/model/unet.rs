//! The course assignment's UNet, with optional time and class conditioning.
//!
//! Shapes, with D the hidden width and x a batch of [N, 1, 28, 28] images:
//! x0 [N, D, 28, 28] -> d1 [N, D, 14, 14] -> d2 [N, 2D, 7, 7] -> flat [N, 2D, 1, 1] -> u0 [N, 2D, 7, 7]
//! -> u1 [N, D, 14, 14] (from cat[u0, d2]) -> u2 [N, D, 28, 28] (from cat[u1, d1]) -> out [N, 1, 28, 28]
//! (from cat[u2, x0]). Time t is [N] in [0, 1]; the class is a one-hot [N, 10] where all zeros means "no class".
//! Conditioning: u0 = c1(c) * u0 + t1(t) and u1 = c2(c) * u1 + t2(t), each missing term left out.

use tch::nn;
use tch::Tensor;

use super::blocks::{ConvBlock, ConvNormAct, FcBlock, Resample, ResampleBlock};
use super::matmul_conv;
use super::UNetConfig;

#[derive(Debug)]
struct Conditioning {
    t1: FcBlock,
    t2: FcBlock,
}

#[derive(Debug)]
pub struct BasicUNet {
    input: ConvBlock,
    down1: ResampleBlock,
    down2: ResampleBlock,
    unflatten: ConvNormAct,
    up1: ResampleBlock,
    up2: ResampleBlock,
    output: ConvBlock,
    last: nn::Conv2D,
    time: Option<Conditioning>,
    class: Option<Conditioning>,
}

impl BasicUNet {
    pub fn new(path: &nn::Path, config: &UNetConfig) -> Self {
        let d = config.hidden;
        let conditioning = |name: &str, c_in: i64| Conditioning {
            t1: FcBlock::new(path / name / "1", c_in, 2 * d),
            t2: FcBlock::new(path / name / "2", c_in, d),
        };
        Self {
            input: ConvBlock::new(path / "input", 1, d),
            down1: ResampleBlock::down(path / "down1", d, d),
            down2: ResampleBlock::down(path / "down2", d, 2 * d),
            unflatten: ConvNormAct::new(path / "unflatten", 2 * d, 2 * d, Resample::Unflatten),
            up1: ResampleBlock::up(path / "up1", 4 * d, d),
            up2: ResampleBlock::up(path / "up2", 2 * d, d),
            output: ConvBlock::new(path / "output", 2 * d, d),
            last: nn::conv2d(
                path / "last",
                d,
                1,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ),
            time: config.time_cond.then(|| conditioning("time", 1)),
            class: config.class_cond.then(|| conditioning("class", config.num_classes)),
        }
    }

    /// x [N, 1, 28, 28], t [N] (used when time-conditioned), class [N, classes] (when class-conditioned)
    /// -> [N, 1, 28, 28].
    pub fn forward_t(&self, x: &Tensor, t: Option<&Tensor>, class: Option<&Tensor>, train: bool) -> Tensor {
        let x0 = self.input.forward_t(x, train); // [N, D, 28, 28]
        let d1 = self.down1.forward_t(&x0, train); // [N, D, 14, 14]
        let d2 = self.down2.forward_t(&d1, train); // [N, 2D, 7, 7]
        let flat = d2.avg_pool2d([7, 7], [7, 7], [0, 0], false, true, None).gelu("none"); // [N, 2D, 1, 1]
        let mut u0 = self.unflatten.forward_t(&flat, train); // [N, 2D, 7, 7]
        let t = t.map(|t| t.view([-1, 1])); // [N, 1]
        if let (Some(c), Some(class)) = (&self.class, class) {
            u0 = c.t1.forward(class) * u0;
        }
        if let (Some(c), Some(t)) = (&self.time, &t) {
            u0 += c.t1.forward(t);
        }
        let mut u1 = self.up1.forward_t(&Tensor::cat(&[&u0, &d2], 1), train); // [N, D, 14, 14]
        if let (Some(c), Some(class)) = (&self.class, class) {
            u1 = c.t2.forward(class) * u1;
        }
        if let (Some(c), Some(t)) = (&self.time, &t) {
            u1 += c.t2.forward(t);
        }
        let u2 = self.up2.forward_t(&Tensor::cat(&[&u1, &d1], 1), train); // [N, D, 28, 28]

        // In sampling, the concatenation's copy at 28x28 costs more than a second convolution, and the last
        // convolution (one output channel) is faster as a matrix product (blocks.rs: not in training).
        let h = self.output.forward_cat_t(&[&u2, &x0], train);
        if train {
            h.apply(&self.last)
        } else {
            matmul_conv::conv_to_one_channel(&h, &self.last.ws, self.last.bs.as_ref())
                .unwrap_or_else(|| h.apply(&self.last))
        } // [N, 1, 28, 28]
    }
}
