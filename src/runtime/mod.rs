//! Where and how the tensor work runs: device and threads, precision (and its measured choice per CPU), memory
//! layout, the seeded random streams, and the fused ops the shim adds to libtorch.

pub mod bn_gelu;
pub mod device;
pub mod layout;
pub mod precision;
pub mod rng;
pub mod tuning;
