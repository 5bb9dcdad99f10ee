//! Where and how the tensor work runs: device and threads, precision (and its measured choice per CPU), memory
//! layout, the seeded random streams, and the fused ops the shim adds to libtorch.

pub mod bn_gelu;
pub mod device;
pub mod layout;
pub mod precision;
pub mod rng;
pub mod tuning;

/// The libtorch handle of `t`, as the C++ shim takes it. The shim reads the tensor or swaps its data in place
/// (`set_data`, as libtorch's own in-place ops do), so the `*mut` does not outlive the borrow.
pub(crate) fn raw(t: &tch::Tensor) -> *mut torch_sys::C_tensor {
    t.as_ptr() as *mut torch_sys::C_tensor
}
