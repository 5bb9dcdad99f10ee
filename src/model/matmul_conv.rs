//! The basic UNet's convolutions with one channel on a side, and the Unflatten's transposed convolution of a 1x1
//! map, as matrix products, for sampling.
//!
//! oneDNN's convolution kernels are built for many channels in and out. With one input channel (the first
//! convolution), one output channel (the last) or a 1x1 input (the Unflatten) they run far below the machine's
//! matrix-product speed, while the same arithmetic as one matrix product runs at it. Measured on the Intel Xeon of
//! README's Performance section (AVX512-BF16, no AMX; 2 threads, batch 128, D=64, fp32 channels-last, forward and
//! backward, PyTorch 2.11's ATen calls, medians of 3): the first convolution 18.0 against 7.7 ms, the last 17.7
//! against 11.5 ms, the Unflatten 20.1 against 3.3 ms. They apply on the CPU; CUDA keeps cuDNN's kernels. Training
//! does not use them: whole training runs with them were no faster, once slower (README, Performance).
//!
//! Every function returns None where its shapes or device do not apply, and the caller then runs libtorch's
//! convolution. The output has the memory order libtorch's convolution would give it: channels-last when the
//! input or the weight reads as channels-last ([`layout::suggests_channels_last`]). Autograd differentiates the matrix
//! products (the tests compare gradients too).

use tch::{Device, Tensor};

use crate::runtime::layout;

/// libtorch's choice of output layout for a convolution of `x` by `weight`.
fn channels_last_output(x: &Tensor, weight: &Tensor) -> bool {
    layout::suggests_channels_last(x) || layout::suggests_channels_last(weight)
}

/// (O, I, k) of a weight [O, I, k, k] with an odd k (a "same" convolution's), on the CPU like `x`; else None.
fn same_kernel(x: &Tensor, weight: &Tensor) -> Option<(i64, i64, i64)> {
    match weight.size()[..] {
        [o, i, k, k2] if k == k2 && k % 2 == 1 && x.device() == Device::Cpu && x.dim() == 4 => Some((o, i, k)),
        _ => None,
    }
}

/// `x.conv2d(weight, bias, stride 1, padding k / 2)` for a one-channel x [N, 1, H, W] and weight [O, 1, k, k]:
/// the k*k shifted copies of x (im2col, [N, k*k, H*W]) times the weight as a [k*k, O] matrix.
pub fn conv_from_one_channel(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let (o, i, k) = same_kernel(x, weight)?;
    let [n, 1, h, w] = x.size()[..] else { return None };
    if i != 1 {
        return None;
    }
    let cols = x.im2col([k, k], [1, 1], [k / 2, k / 2], [1, 1]); // [N, k*k, H*W]
    let taps = weight.reshape([o, k * k]);
    Some(if channels_last_output(x, weight) {
        let y = cols.transpose(1, 2).matmul(&taps.tr()); // [N, H*W, O]
        let y = bias.map_or_else(|| y.shallow_clone(), |b| &y + b);
        y.view([n, h, w, o]).permute([0, 3, 1, 2])
    } else {
        let y = taps.matmul(&cols); // [N, O, H*W]
        let y = bias.map_or_else(|| y.shallow_clone(), |b| &y + b.view([o, 1]));
        y.view([n, o, h, w])
    })
}

/// `h.conv2d(weight, bias, stride 1, padding k / 2)` to one channel, for h [N, C, H, W] and weight [1, C, k, k]:
/// each pixel's contribution to each of its k*k neighbours (a [N*H*W, C] by [C, k*k] matrix product), summed at
/// every output pixel by col2im. col2im adds column tap t at offset t - k/2, where the convolution reads tap t at
/// k/2 - t, so the taps go in reversed.
pub fn conv_to_one_channel(h: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let (o, c, k) = same_kernel(h, weight)?;
    let [n, _, height, width] = h.size()[..] else {
        return None;
    };
    if o != 1 || h.size()[1] != c {
        return None;
    }
    let taps = weight.reshape([c, k * k]).flip([1]); // [C, k*k], taps reversed
    let cols = if layout::suggests_channels_last(h) {
        // [N, H, W, C] is h's own memory order, so this is one [N*H*W, C] by [C, k*k] product.
        h.permute([0, 2, 3, 1])
            .reshape([n, height * width, c])
            .matmul(&taps)
            .transpose(1, 2)
    } else {
        taps.tr().matmul(&h.reshape([n, c, height * width]))
    }; // [N, k*k, H*W]
    let y = cols.col2im([height, width], [k, k], [1, 1], [k / 2, k / 2], [1, 1]); // [N, 1, H, W]
    Some(bias.map_or_else(|| y.shallow_clone(), |b| &y + b.view([1, 1, 1, 1])))
}

/// `x.conv_transpose2d(weight, bias, stride k, padding 0)` of a 1x1 map x [N, C, 1, 1] by weight [C, O, k, k]:
/// each input writes its own k x k output, so this is a [N, C] by [C, O*k*k] matrix product.
pub fn conv_transpose_of_1x1(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let [n, c, 1, 1] = x.size()[..] else { return None };
    let [ci, o, k, k2] = weight.size()[..] else { return None };
    if x.device() != Device::Cpu || ci != c || k != k2 {
        return None;
    }
    let x2 = x.reshape([n, c]);
    Some(if channels_last_output(x, weight) {
        // A channels-last weight is [C, k, k, O] in memory, so this reshape is a view.
        let y = x2
            .matmul(&weight.permute([0, 2, 3, 1]).reshape([c, k * k * o]))
            .view([n, k, k, o]);
        let y = bias.map_or_else(|| y.shallow_clone(), |b| &y + b);
        y.permute([0, 3, 1, 2])
    } else {
        let y = x2.matmul(&weight.reshape([c, o * k * k])).view([n, o, k, k]);
        bias.map_or_else(|| y.shallow_clone(), |b| &y + b.view([1, o, 1, 1]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::layout::Layout;
    use tch::Kind;

    /// Output, and the gradients of the input and the weight for an upstream gradient with no pattern to it.
    fn with_grads(f: impl Fn(&Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor) -> [Tensor; 3] {
        let x = x.detach().set_requires_grad(true);
        let w = w.detach().set_requires_grad(true);
        let y = f(&x, &w);
        // A fixed upstream gradient (not the global generator, which tests running in parallel share).
        let dy = Tensor::arange(y.numel() as i64, (Kind::Float, Device::Cpu))
            .sin()
            .view_as(&y);
        (&y * &dy).sum(Kind::Float).backward();
        [y.detach(), x.grad(), w.grad()]
    }

    /// Each matrix-product form gives libtorch's convolution (output, both gradients, with and without a bias) in
    /// both layouts, and lays its output out as the convolution does.
    fn check(
        ours: fn(&Tensor, &Tensor, Option<&Tensor>) -> Option<Tensor>,
        conv: impl Fn(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
        x_shape: [i64; 4],
        w_shape: [i64; 4],
        bias_len: i64,
    ) {
        tch::manual_seed(7);
        let opts = (Kind::Float, Device::Cpu);
        let (x, w, b) = (
            Tensor::randn(x_shape, opts),
            Tensor::randn(w_shape, opts),
            Tensor::randn([bias_len], opts),
        );
        for layout in [Layout::ChannelsLast, Layout::Contiguous] {
            let (x, w) = (layout.apply(&x), layout.apply(&w));
            for bias in [None, Some(&b)] {
                let expected = with_grads(|x, w| conv(x, w, bias), &x, &w);
                let got = with_grads(|x, w| ours(x, w, bias).expect("applies"), &x, &w);
                for (name, (g, e)) in ["output", "input gradient", "weight gradient"]
                    .iter()
                    .zip(got.iter().zip(&expected))
                {
                    assert_eq!(g.size(), e.size(), "{layout:?} {name}");
                    let err = (g - e).abs().max().double_value(&[]);
                    let scale = e.abs().max().double_value(&[]);
                    assert!(
                        err <= 1e-5 * scale.max(1.0),
                        "{layout:?}, bias {}: {name} off by {err}",
                        bias.is_some()
                    );
                }
                let memory_order = |t: &Tensor| (t.is_contiguous(), layout::is_channels_last(t));
                assert_eq!(
                    memory_order(&got[0]),
                    memory_order(&expected[0]),
                    "{layout:?}: output layout"
                );
            }
        }
    }

    #[test]
    fn first_convolution_matches_libtorch() {
        check(
            conv_from_one_channel,
            |x, w, b| x.conv2d(w, b, [1, 1], [1, 1], [1, 1], 1),
            [4, 1, 9, 7],
            [6, 1, 3, 3],
            6,
        );
    }

    #[test]
    fn last_convolution_matches_libtorch() {
        check(
            conv_to_one_channel,
            |x, w, b| x.conv2d(w, b, [1, 1], [1, 1], [1, 1], 1),
            [4, 6, 9, 7],
            [1, 6, 3, 3],
            1,
        );
    }

    #[test]
    fn unflatten_matches_libtorch() {
        check(
            conv_transpose_of_1x1,
            |x, w, b| x.conv_transpose2d(w, b, [5, 5], [0, 0], [0, 0], 1, [1, 1]),
            [4, 6, 1, 1],
            [6, 3, 5, 5],
            3,
        );
    }

    #[test]
    fn other_shapes_and_devices_are_left_to_libtorch() {
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 3, 8, 8], opts);
        assert!(conv_from_one_channel(&x, &Tensor::randn([4, 3, 3, 3], opts), None).is_none());
        assert!(conv_to_one_channel(&x, &Tensor::randn([2, 3, 3, 3], opts), None).is_none());
        assert!(conv_from_one_channel(&x.narrow(1, 0, 1), &Tensor::randn([4, 1, 2, 2], opts), None).is_none());
        assert!(conv_transpose_of_1x1(&x, &Tensor::randn([3, 4, 7, 7], opts), None).is_none());
    }
}
