//! The memory layout of images and convolution weights: channels-last (NHWC) or contiguous (NCHW).
//!
//! oneDNN (CPU) and cuDNN often run convolutions faster on channels-last tensors, but not everywhere: PyTorch's own
//! cfg training step on an Intel Xeon with AVX512-BF16 ran 4% faster channels-last in fp32 and 5% slower in bf16
//! (README, Performance). So the layout is chosen per machine and per kind of work, with the precision
//! ([`crate::runtime::tuning`]).
//! tch 0.24 has no memory-format API, so the conversion goes through `csrc/libtorch_shim.cpp`. Layout never changes
//! stored values: saved weights are written contiguous (NCHW) and load into either layout. Computed values may differ
//! in their last bits between layouts (other kernels), so byte-exact comparisons hold within one layout.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use torch_sys::C_tensor;

use crate::runtime::raw;

/// The `--layout` flag.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// NHWC: channels innermost.
    #[default]
    ChannelsLast,
    /// NCHW: libtorch's default.
    Contiguous,
}

impl Layout {
    /// How the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::ChannelsLast => "channels-last",
            Layout::Contiguous => "contiguous",
        }
    }

    /// The same values in this layout (4-D tensors; others are returned as they are).
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Layout::ChannelsLast => channels_last(x),
            Layout::Contiguous => x.contiguous(),
        }
    }
}

extern "C" {
    fn diffuse_channels_last(tensor: *mut C_tensor) -> *mut C_tensor;
    fn diffuse_make_channels_last(tensor: *mut C_tensor);
    fn diffuse_is_channels_last(tensor: *mut C_tensor) -> i32;
    fn diffuse_suggests_channels_last(tensor: *mut C_tensor) -> i32;
}

/// The same values in channels-last layout (4-D tensors; others are returned as they are).
pub fn channels_last(x: &Tensor) -> Tensor {
    // SAFETY: the shim returns a fresh heap-allocated at::Tensor handle, which tch then owns and frees.
    unsafe { Tensor::from_ptr(diffuse_channels_last(raw(x))) }
}

/// Re-lays a 4-D variable out in channels-last memory in place (same variable, same autograd identity).
pub fn make_channels_last(t: &Tensor) {
    // SAFETY: `t` is a live at::Tensor handle; set_data swaps its storage for a same-shaped one.
    unsafe { diffuse_make_channels_last(raw(t)) }
}

pub fn is_channels_last(t: &Tensor) -> bool {
    // SAFETY: reads a live at::Tensor handle.
    unsafe { diffuse_is_channels_last(raw(t)) != 0 }
}

/// Whether libtorch reads this 4-D tensor as channels-last (its `suggest_memory_format`, from the strides): the
/// reading a convolution uses to lay out its output. Unlike [`is_channels_last`] it tells the layouts apart where
/// both are contiguous, as for a one-channel image converted with [`Layout::apply`].
pub fn suggests_channels_last(t: &Tensor) -> bool {
    // SAFETY: reads a live at::Tensor handle.
    unsafe { diffuse_suggests_channels_last(raw(t)) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn conversion_keeps_values_and_changes_layout() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let y = channels_last(&x);
        assert!(is_channels_last(&y) && !is_channels_last(&x));
        assert!(x.equal(&y));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let before = w.detach().copy();
        make_channels_last(&w);
        assert!(is_channels_last(&w) && w.requires_grad());
        assert!(before.equal(&w.detach()));
        let v = Tensor::randn([7], (Kind::Float, Device::Cpu));
        assert!(channels_last(&v).equal(&v));
    }
}
