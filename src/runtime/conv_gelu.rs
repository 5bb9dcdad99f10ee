//! GELU applied by oneDNN inside a convolution (a post-op), for sampling on the CPU (`csrc/libtorch_shim.cpp`).
//!
//! In eval mode each UNet block is a convolution (BatchNorm folded in) followed by GELU, which libtorch runs as a
//! second pass over the convolution's output. ATen registers oneDNN's convolution with a GELU post-op for Inductor
//! (`mkldnn::_convolution_pointwise`, `mkldnn::_convolution_transpose_pointwise`); calling it spares that pass. It
//! has no gradient, so it applies only where autograd does not record: on the CPU under no-grad, in fp32, or under
//! bf16 autocast in bf16 (the inputs cast as autocast casts a convolution's, GELU applied before the result is
//! rounded to bf16) where oneDNN runs bf16 ([`applies_in_bf16`]; not on an AVX2-only CPU).

use std::ffi::c_char;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::runtime::{raw, shim_result};

extern "C" {
    fn diffuse_conv_gelu(
        x: *mut C_tensor,
        weight: *mut C_tensor,
        bias: *mut C_tensor,
        stride: i64,
        padding: i64,
        transposed: i32,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn diffuse_conv_gelu_error() -> *const c_char;
    fn diffuse_conv_gelu_bf16() -> i32;
}

/// Whether [`conv_gelu`] applies under bf16 autocast on this CPU: where oneDNN runs bf16 convolutions (ATen's own
/// test; not where bf16 is emulated, as on AVX2 or under `ONEDNN_MAX_CPU_ISA=AVX2`).
pub fn applies_in_bf16() -> bool {
    // SAFETY: the shim only reads (once) what ATen reports of the CPU.
    unsafe { diffuse_conv_gelu_bf16() != 0 }
}

/// Which convolution: libtorch's `conv2d` (weight [out, in, k, k]) or `conv_transpose2d` (weight [in, out, k, k],
/// no output padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Transposed,
}

/// GELU(conv(x, weight, bias)) with the same stride and padding along both axes, as one oneDNN convolution; None
/// where it does not apply (see the module's text), and the caller runs libtorch's convolution and GELU.
pub fn conv_gelu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: i64,
    padding: i64,
    direction: Direction,
) -> Option<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: every handle is a live at::Tensor (bias may be null); on success the shim hands over a fresh
    // heap-allocated handle, which tch then owns and frees.
    let status = unsafe {
        diffuse_conv_gelu(
            raw(x),
            raw(weight),
            bias.map_or(std::ptr::null_mut(), raw),
            stride,
            padding,
            i32::from(direction == Direction::Transposed),
            &mut out,
        )
    };
    // SAFETY: status and handle as the shim wrote them; its error text is NUL-terminated.
    unsafe { shim_result(status, out, "convolution with GELU", diffuse_conv_gelu_error) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::layout::Layout;
    use tch::{Device, Kind};

    /// Under no-grad the fused op gives libtorch's convolution then GELU, in both directions, strides and layouts,
    /// with and without a bias, in the same memory order; while autograd records, it leaves the work to libtorch.
    #[test]
    fn matches_convolution_then_gelu() {
        tch::manual_seed(13);
        let opts = (Kind::Float, Device::Cpu);
        let cases = [
            (Direction::Forward, [6, 5, 3, 3], 1, 1),
            (Direction::Forward, [6, 5, 3, 3], 2, 1),
            (Direction::Transposed, [5, 6, 4, 4], 2, 1),
        ];
        for (direction, w_shape, stride, padding) in cases {
            let x = Tensor::randn([3, 5, 9, 9], opts);
            let w = Tensor::randn(w_shape, opts) * 0.2;
            let b = Tensor::randn([6], opts);
            for layout in [Layout::ChannelsLast, Layout::Contiguous] {
                let (x, w) = (layout.apply(&x), layout.apply(&w));
                for bias in [None, Some(&b)] {
                    let conv = |x: &Tensor| match direction {
                        Direction::Forward => x.conv2d(&w, bias, [stride; 2], [padding; 2], [1, 1], 1),
                        Direction::Transposed => {
                            x.conv_transpose2d(&w, bias, [stride; 2], [padding; 2], [0, 0], 1, [1, 1])
                        }
                    };
                    let expected = conv(&x).gelu("none");
                    let got = tch::no_grad(|| conv_gelu(&x, &w, bias, stride, padding, direction)).expect("applies");
                    let what = format!("{direction:?} stride {stride} {layout:?} bias {}", bias.is_some());
                    assert_eq!(got.size(), expected.size(), "{what}");
                    assert!(got.allclose(&expected, 1e-5, 1e-5, false), "{what}");
                    let order = |t: &Tensor| (t.is_contiguous(), crate::runtime::layout::is_channels_last(t));
                    assert_eq!(order(&got), order(&expected), "{what}: memory order");
                }
            }
            let w = w.set_requires_grad(true);
            assert!(
                conv_gelu(&x, &w, None, stride, padding, direction).is_none(),
                "recording autograd"
            );
        }
    }

    /// Under bf16 autocast the fused op returns bf16, like autocast's convolution; against the fp32 result for the
    /// same bf16 inputs it is on average at least as close as libtorch's bf16 convolution then GELU (which rounds
    /// twice), and everywhere within one rounding to bf16 (half a unit, 2^-8 of the largest value) and float error.
    /// Where oneDNN does not run bf16 it declines (None: the caller runs libtorch's ops) instead of failing.
    #[test]
    fn under_bf16_autocast_returns_bf16_as_close_as_libtorch() {
        use crate::runtime::precision::{autocast, Precision};
        use crate::runtime::relative_error;
        tch::manual_seed(17);
        let opts = (Kind::Float, Device::Cpu);
        let bf16_values = |t: Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        for (direction, w_shape, stride) in [
            (Direction::Forward, [16, 32, 3, 3], 1),
            (Direction::Transposed, [32, 16, 4, 4], 2),
        ] {
            let x = bf16_values(Tensor::randn([4, 32, 14, 14], opts));
            let w = bf16_values(Tensor::randn(w_shape, opts) * 0.1);
            let b = bf16_values(Tensor::randn([16], opts));
            for layout in [Layout::ChannelsLast, Layout::Contiguous] {
                let (x, w) = (layout.apply(&x), layout.apply(&w));
                let conv = |x: &Tensor| match direction {
                    Direction::Forward => x.conv2d(&w, Some(&b), [stride; 2], [1, 1], [1, 1], 1),
                    Direction::Transposed => x.conv_transpose2d(&w, Some(&b), [stride; 2], [1, 1], [0, 0], 1, [1, 1]),
                };
                let exact = conv(&x).gelu("none");
                let libtorch = autocast(Precision::Bf16, Device::Cpu, || conv(&x).gelu("none"));
                let got = autocast(Precision::Bf16, Device::Cpu, || {
                    tch::no_grad(|| conv_gelu(&x, &w, Some(&b), stride, 1, direction))
                });
                let what = format!("{direction:?} {layout:?}");
                assert_eq!(got.is_some(), applies_in_bf16(), "{what}");
                let Some(got) = got else { continue };
                assert_eq!(
                    (got.kind(), libtorch.kind()),
                    (Kind::BFloat16, Kind::BFloat16),
                    "{what}"
                );
                assert_eq!(got.size(), exact.size(), "{what}");
                let largest = relative_error::largest(&got, &exact);
                assert!(
                    largest <= 2f64.powi(-8) + 1e-5,
                    "{what}: off by {largest:e} of the largest value"
                );
                let (ours, theirs) = (
                    relative_error::mean(&got, &exact),
                    relative_error::mean(&libtorch, &exact),
                );
                assert!(
                    ours <= theirs,
                    "{what}: off by {ours:e} on average, libtorch's bf16 by {theirs:e}"
                );
            }
        }
    }
}
