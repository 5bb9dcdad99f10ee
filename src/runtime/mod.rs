//! Where and how the tensor work runs: device and threads, precision (and its measured choice per CPU), memory
//! layout, the seeded random streams, and the fused ops the shim adds to libtorch.

pub mod bn_gelu;
pub mod conv_gelu;
pub mod cuda;
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

/// What a shim op that may decline returns: 1 with a fresh heap-allocated handle in `out`, which the returned
/// tensor then owns; 0 where the op does not apply (None). Anything else is an exception inside libtorch on inputs
/// the shim accepted: a bug, as a failing libtorch op would be, so it panics with `error()`'s message.
///
/// # Safety
/// `out` must be the handle the shim wrote with status 1, and `error` must return a NUL-terminated string.
pub(crate) unsafe fn shim_result(
    status: i32,
    out: *mut torch_sys::C_tensor,
    what: &str,
    error: unsafe extern "C" fn() -> *const std::ffi::c_char,
) -> Option<tch::Tensor> {
    match status {
        // SAFETY: the caller's promise (the handle the shim wrote).
        1 => Some(unsafe { tch::Tensor::from_ptr(out) }),
        0 => None,
        // SAFETY: the caller's promise (a NUL-terminated string).
        _ => panic!(
            "{what} failed: {}",
            unsafe { std::ffi::CStr::from_ptr(error()) }.to_string_lossy()
        ),
    }
}

/// How far the fused ops' results are from a reference, for their tests: the absolute difference relative to the
/// reference's magnitude, at its largest or on average.
#[cfg(test)]
pub(crate) mod relative_error {
    use tch::{Kind, Tensor};

    /// max |got - want| / max |want| (got read in want's type).
    pub fn largest(got: &Tensor, want: &Tensor) -> f64 {
        let scale = want.abs().max().double_value(&[]).max(1e-12);
        (got.to_kind(want.kind()) - want).abs().max().double_value(&[]) / scale
    }

    /// mean |got - want| / mean |want| (got read in want's type).
    pub fn mean(got: &Tensor, want: &Tensor) -> f64 {
        let scale = want.abs().mean(Kind::Float).double_value(&[]).max(1e-12);
        (got.to_kind(want.kind()) - want)
            .abs()
            .mean(Kind::Float)
            .double_value(&[])
            / scale
    }
}
