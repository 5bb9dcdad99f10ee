//! BatchNorm2d in training mode followed by exact GELU, as one autograd op on the CPU (`csrc/bn_gelu.cpp`), for
//! fp32 tensors and for the bf16 ones that convolutions return under bf16 autocast.
//!
//! Every convolution of the UNet but the last is followed by BatchNorm and GELU. libtorch runs those as separate
//! memory-bound passes and stores the normalised tensor for GELU's backward; the fused op makes three passes
//! forward and two backward and stores nothing extra: cfg training 1.12x faster in fp32 with a fifth less peak
//! memory on a 2-core AVX-512 Xeon, and faster in bf16 on an AMD EPYC with AVX512-BF16 (README, Performance). bf16
//! tensors are read as float and computed in float; the output is rounded to bf16 once (libtorch rounds the
//! normalised tensor too, before GELU), dx twice, as dz and as dx, as in libtorch's path. Where it does not apply
//! (CUDA, a tensor in neither NCHW nor NHWC memory) the caller runs libtorch's two ops; in fp32 both give the same
//! values to float rounding.

use std::ffi::c_char;

use tch::{nn, Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::runtime::{raw, shim_result};

extern "C" {
    fn diffuse_bn_gelu_train(
        x: *mut C_tensor,
        gamma: *mut C_tensor,
        beta: *mut C_tensor,
        running_mean: *mut C_tensor,
        running_var: *mut C_tensor,
        conv_bias: *mut C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn diffuse_bn_gelu_error() -> *const c_char;
}

/// Whether the fused op can take the output of a convolution of `x`: on the CPU, in fp32 or bf16 (the output of a
/// convolution under bf16 autocast is bf16 whatever its input).
pub fn applies_to_input(x: &Tensor) -> bool {
    x.device() == Device::Cpu && matches!(x.kind(), Kind::Float | Kind::BFloat16)
}

/// GELU(BatchNorm(x + conv_bias)) in training mode for x [N, C, H, W] and an optional conv_bias [C], updating
/// `norm`'s running statistics with `momentum`; None where the fused op does not apply, and the caller should run
/// libtorch's ops.
pub fn batch_norm_gelu_train(
    x: &Tensor,
    norm: &nn::BatchNorm,
    conv_bias: Option<&Tensor>,
    momentum: f64,
    eps: f64,
) -> Option<Tensor> {
    let (gamma, beta) = (norm.ws.as_ref()?, norm.bs.as_ref()?);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: every handle is a live at::Tensor; on success the shim hands over a fresh heap-allocated handle,
    // which tch then owns and frees.
    let status = unsafe {
        diffuse_bn_gelu_train(
            raw(x),
            raw(gamma),
            raw(beta),
            raw(&norm.running_mean),
            raw(&norm.running_var),
            conv_bias.map_or(std::ptr::null_mut(), raw),
            momentum,
            eps,
            &mut out,
        )
    };
    // SAFETY: status and handle as the shim wrote them; its error text is NUL-terminated.
    unsafe { shim_result(status, out, "fused BatchNorm + GELU", diffuse_bn_gelu_error) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::layout::Layout;
    use crate::runtime::relative_error;
    use tch::{Device, Kind};

    const MOMENTUM: f64 = 0.1;
    const EPS: f64 = 1e-5;

    /// The output, the gradients of x, gamma and beta for an upstream gradient `dy`, and the running statistics
    /// after one step, for x + bias (a convolution's bias): from the fused op given x and the bias (`fused`), or
    /// from libtorch's batch_norm and gelu given x + bias.
    fn run(x: &Tensor, bias: &Tensor, dy: &Tensor, fused: bool) -> Vec<Tensor> {
        let vs = nn::VarStore::new(Device::Cpu);
        let channels = x.size()[1];
        let mut norm = nn::batch_norm2d(vs.root(), channels, Default::default());
        let affine = |t: &Option<Tensor>| {
            t.as_ref()
                .map(Tensor::shallow_clone)
                .expect("BatchNorm2d is affine by default")
        };
        let (mut gamma, mut beta) = (affine(&norm.ws), affine(&norm.bs));
        tch::no_grad(|| {
            // Parameters and statistics away from their initial values, so that every term of the math shows.
            let values = Tensor::linspace(0.5, 1.5, channels, (Kind::Float, Device::Cpu));
            gamma.copy_(&values);
            beta.copy_(&(values - 1.0));
            let _ = norm.running_mean.fill_(0.3);
            let _ = norm.running_var.fill_(2.0);
        });
        let x = x.detach().set_requires_grad(true);
        let y = if fused {
            batch_norm_gelu_train(&x, &norm, Some(bias), MOMENTUM, EPS).expect("the fused op applies on the CPU")
        } else {
            // (a bf16 x stands for a convolution's output under autocast, which includes the bias in bf16)
            Tensor::batch_norm(
                &(&x + bias.view([1, -1, 1, 1])).to_kind(x.kind()),
                norm.ws.as_ref(),
                norm.bs.as_ref(),
                Some(&norm.running_mean),
                Some(&norm.running_var),
                true,
                MOMENTUM,
                EPS,
                false,
            )
            .gelu("none")
        };
        (&y * dy).sum(Kind::Float).backward();
        vec![
            y.detach().to_kind(Kind::Float),
            x.grad().to_kind(Kind::Float),
            gamma.grad(),
            beta.grad(),
            norm.running_mean.copy(),
            norm.running_var.copy(),
        ]
    }

    #[test]
    fn matches_libtorch_batch_norm_then_gelu_in_both_layouts() {
        tch::manual_seed(7);
        // Shapes of the UNet (C a multiple of the vector width) and odd ones that exercise the scalar tails;
        // an offset mean checks the variance for cancellation.
        let cases: [([i64; 4], f64); 4] = [
            ([8, 64, 28, 28], 0.0),
            ([3, 24, 14, 14], 5.0),
            ([5, 7, 3, 5], 0.0),
            ([16, 128, 7, 7], 20.0),
        ];
        let names = ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"];
        for (shape, offset) in cases {
            for layout in [Layout::ChannelsLast, Layout::Contiguous] {
                let x = layout.apply(&(Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 2.0 + offset));
                let dy = layout.apply(&Tensor::randn(shape, (Kind::Float, Device::Cpu)));
                let bias = Tensor::randn([shape[1]], (Kind::Float, Device::Cpu));
                let fused = run(&x, &bias, &dy, true);
                let reference = run(&x, &bias, &dy, false);
                assert_eq!(
                    crate::runtime::layout::is_channels_last(&fused[0]),
                    crate::runtime::layout::is_channels_last(&x),
                    "the output keeps the input's layout"
                );
                for ((name, got), want) in names.iter().zip(&fused).zip(&reference) {
                    let error = relative_error::largest(got, want);
                    // float rounding of sums over up to 50,000 values, and erf to 1.5e-7
                    let bound = if offset > 0.0 { 1e-4 } else { 1e-5 };
                    assert!(
                        error < bound,
                        "{shape:?} offset {offset} {}: {name} off by {error:e}",
                        layout.name()
                    );
                }
            }
        }
    }

    /// bf16 tensors (a convolution's output under bf16 autocast): against the fp32 result for the same bf16 values
    /// the fused op is on average at least as close as libtorch's bf16 path (batch_norm with a bf16 input, then
    /// gelu), and everywhere within what bf16 rounding explains: y rounded once (half a bf16 unit, 2^-8 of the
    /// largest value), dx from a rounded dz and rounded itself (2^-7), the sums and running statistics computed in
    /// float from exact inputs.
    #[test]
    fn bf16_is_as_close_to_fp32_as_libtorch_bf16_in_both_layouts() {
        tch::manual_seed(11);
        let names = ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"];
        let bounds = [2f64.powi(-8), 2f64.powi(-7), 1e-5, 1e-5, 1e-5, 1e-5];
        for (shape, offset) in [([8_i64, 64, 28, 28], 0.0), ([5, 7, 3, 5], 3.0), ([16, 128, 7, 7], 0.5)] {
            for layout in [Layout::ChannelsLast, Layout::Contiguous] {
                let bf16 = |t: Tensor| layout.apply(&t.to_kind(Kind::BFloat16));
                let x = bf16(Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 2.0 + offset);
                let dy = bf16(Tensor::randn(shape, (Kind::Float, Device::Cpu)));
                // a bias that bf16 holds exactly, so that libtorch's x + bias in bf16 is the fp32 sum rounded once
                let bias = Tensor::randn([shape[1]], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
                let bias = bias.to_kind(Kind::Float);
                let fused = run(&x, &bias, &dy, true);
                let libtorch = run(&x, &bias, &dy, false);
                let exact = run(&x.to_kind(Kind::Float), &bias, &dy.to_kind(Kind::Float), false);
                assert_eq!(
                    crate::runtime::layout::is_channels_last(&fused[0]),
                    crate::runtime::layout::is_channels_last(&x),
                    "the output keeps the input's layout"
                );
                for ((((name, bound), got), theirs), want) in
                    names.iter().zip(bounds).zip(&fused).zip(&libtorch).zip(&exact)
                {
                    let what = format!("{shape:?} {}: {name}", layout.name());
                    let largest = relative_error::largest(got, want);
                    assert!(
                        largest <= bound,
                        "{what} off by {largest:e} of the largest value (bound {bound:e})"
                    );
                    let (ours, libtorchs) = (relative_error::mean(got, want), relative_error::mean(theirs, want));
                    assert!(
                        ours <= libtorchs,
                        "{what} off by {ours:e} on average, libtorch's bf16 by {libtorchs:e}"
                    );
                }
            }
        }
    }

    /// The bf16 loops compute what the fp32 ones compute from the same values and round it to nearest, ties to
    /// even, as libtorch does: the fused op's bf16 output equals, bit for bit, its fp32 output for the widened input
    /// rounded by libtorch; a channel of NaN stays NaN. Odd sizes run the scalar tails.
    #[test]
    fn bf16_output_is_the_fp32_output_rounded_as_libtorch_rounds() {
        tch::manual_seed(19);
        for shape in [[4_i64, 64, 14, 14], [3, 7, 5, 3]] {
            for layout in [Layout::ChannelsLast, Layout::Contiguous] {
                let x = layout
                    .apply(&(Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 3.0 + 1.0).to_kind(Kind::BFloat16));
                let _ = x.narrow(1, 1, 1).fill_(f64::NAN);
                // one BatchNorm for both (tch draws its weights at random)
                let vs = nn::VarStore::new(Device::Cpu);
                let norm = nn::batch_norm2d(vs.root(), shape[1], Default::default());
                let output = |x: &Tensor| {
                    tch::no_grad(|| batch_norm_gelu_train(x, &norm, None, MOMENTUM, EPS)).expect("applies")
                };
                let ours = output(&x);
                let theirs = output(&x.to_kind(Kind::Float)).to_kind(Kind::BFloat16);
                let what = format!("{shape:?} {}", layout.name());
                assert_eq!(ours.kind(), Kind::BFloat16, "{what}");
                let nan = ours.isnan();
                assert!(nan.equal(&theirs.isnan()), "{what}: NaN where the fp32 path has NaN");
                assert_eq!(
                    nan.sum(Kind::Int64).int64_value(&[]),
                    shape[0] * shape[2] * shape[3],
                    "{what}"
                );
                let bits = |t: &Tensor| t.masked_fill(&nan, 0.0).view_dtype(Kind::Int16);
                assert!(bits(&ours).equal(&bits(&theirs)), "{what}: not the same bf16 values");
            }
        }
    }

    #[test]
    fn leaves_other_devices_precisions_and_shapes_to_libtorch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = nn::batch_norm2d(vs.root(), 4, Default::default());
        let fused = |x: &Tensor| batch_norm_gelu_train(x, &norm, None, MOMENTUM, EPS);
        let half = Tensor::randn([2, 4, 3, 3], (Kind::Half, Device::Cpu));
        assert!(fused(&half).is_none());
        let strided = Tensor::randn([2, 4, 3, 6], (Kind::Float, Device::Cpu)).slice(3, 0, 6, 2);
        assert!(fused(&strided).is_none());
        let one_value_per_channel = Tensor::randn([1, 4, 1, 1], (Kind::Float, Device::Cpu));
        assert!(fused(&one_value_per_channel).is_none());
        let fp32 = Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu));
        assert!(fused(&fp32).is_some() && applies_to_input(&fp32));
        assert!(applies_to_input(&fp32.to_kind(Kind::BFloat16)) && !applies_to_input(&half));
    }
}
